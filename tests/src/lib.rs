//! End-to-end tests of bluegreen live in `tests/`; this library is empty.
