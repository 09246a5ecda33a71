//! Fences are drawn at random from the operating system's generator.
//!
//! A fence is what lets its holder switch and record deploys while others
//! are refused, so it must not be guessable: not the clock, not a counter.
//! Nothing orders fences — a store only checks that the one presented is
//! the one of the lease held now — so a random draw loses nothing. It is a
//! number in `1..=MAX_GENERATION` (about 46 bits), so every backend holds
//! it exactly; the store makes sure a new lease never gets the fence of the
//! lease before it.

use crate::error::{Error, Result};
use crate::store::MAX_GENERATION;

/// A fence drawn uniformly from `1..=MAX_GENERATION`.
pub(crate) fn draw(backend: &'static str) -> Result<u64> {
    // 47 bits cover the range; a draw outside it is drawn again (about
    // one in three), so every fence is as likely as every other.
    let mask = (1u64 << 47) - 1;
    loop {
        let n = getrandom::u64().map_err(|e| Error::Unavailable {
            backend,
            message: format!("no randomness for a fence: {e}"),
            retryable: true,
        })? & mask;
        if (1..=MAX_GENERATION).contains(&n) {
            return Ok(n);
        }
    }
}

/// The fence a new lease gets from `drawn`: never `previous`, the fence of
/// the lease before it, so a holder whose lease lapsed cannot find its old
/// fence valid again at once.
pub(crate) fn next(drawn: u64, previous: u64) -> u64 {
    if drawn == previous {
        drawn % MAX_GENERATION + 1
    } else {
        drawn
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_are_in_range_and_differ() {
        let draws: Vec<u64> = (0..64).map(|_| draw("test").unwrap()).collect();
        assert!(draws.iter().all(|d| (1..=MAX_GENERATION).contains(d)));
        let mut unique = draws.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), draws.len(), "{draws:?}");
    }

    #[test]
    fn a_new_fence_is_never_the_previous_one() {
        assert_eq!(next(5, 4), 5);
        assert_eq!(next(5, 5), 6);
        assert_eq!(next(MAX_GENERATION, MAX_GENERATION), 1);
    }
}
