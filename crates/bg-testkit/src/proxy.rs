//! A TCP proxy in front of a Redis server that reads the commands going
//! through it, to put one fault at an exact point of a conversation: the
//! connection cut once a script ran, or something done to the servers just
//! before a `WAIT` reaches them.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// The one fault a [`RedisProxy`] puts into the conversations through it.
pub enum Fault {
    /// The first script (`EVAL` or `EVALSHA`) reaches the server and runs;
    /// its answer is thrown away and the client's connection cut, along
    /// with anything the client sent after it.
    CutAfterScript,
    /// The first `WAIT` is held until this has run, then passed on.
    BeforeWait(Box<dyn FnOnce() + Send>),
}

impl std::fmt::Debug for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Fault::CutAfterScript => "CutAfterScript",
            Fault::BeforeWait(_) => "BeforeWait",
        })
    }
}

/// A proxy on a free loopback port in front of the Redis on `upstream`;
/// it puts its [`Fault`] into the first conversation that reaches that
/// point, and stops (with every connection through it) when dropped.
#[derive(Debug)]
pub struct RedisProxy {
    port: u16,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
    fired: Arc<Mutex<Option<Fault>>>,
}

impl RedisProxy {
    /// Starts the proxy.
    ///
    /// # Panics
    /// If no loopback port can be bound.
    #[must_use]
    pub fn start(upstream: u16, fault: Fault) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port for the proxy");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let port = listener.local_addr().expect("the proxy's address").port();
        let stop = Arc::new(AtomicBool::new(false));
        let fired = Arc::new(Mutex::new(Some(fault)));
        let accept = {
            let stop = stop.clone();
            let fault = fired.clone();
            std::thread::spawn(move || {
                let mut open: Vec<TcpStream> = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((client, _)) => {
                            let _ = client.set_nonblocking(false);
                            if let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) {
                                if let (Ok(c), Ok(s)) = (client.try_clone(), server.try_clone()) {
                                    open.push(c);
                                    open.push(s);
                                }
                                relay(client, server, fault.clone());
                            }
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
                for s in open {
                    let _ = s.shutdown(Shutdown::Both);
                }
            })
        };
        RedisProxy {
            port,
            stop,
            accept: Some(accept),
            fired,
        }
    }

    /// The proxy's port.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<proxy port>/0`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Whether the fault has been put in.
    ///
    /// # Panics
    /// If a relay thread panicked holding the fault.
    #[must_use]
    pub fn fired(&self) -> bool {
        self.fired.lock().expect("the fault").is_none()
    }
}

impl Drop for RedisProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// Copies both ways, reading the client's commands to find the fault's point.
fn relay(client: TcpStream, server: TcpStream, fault: Arc<Mutex<Option<Fault>>>) {
    let cut = Arc::new(AtomicBool::new(false));
    let (Ok(mut from_server), Ok(mut to_client)) = (server.try_clone(), client.try_clone()) else {
        return;
    };
    {
        let cut = cut.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 16 * 1024];
            loop {
                match from_server.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if cut.load(Ordering::SeqCst) {
                            // The script's answer: the server ran it; the client never hears.
                            break;
                        }
                        if to_client.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = to_client.shutdown(Shutdown::Both);
            let _ = from_server.shutdown(Shutdown::Both);
        });
    }
    std::thread::spawn(move || {
        let (mut client, mut server) = (client, server);
        let mut pending: Vec<u8> = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        'read: loop {
            match client.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => pending.extend_from_slice(&buf[..n]),
            }
            while !pending.is_empty() {
                let Some((len, name)) = command(&pending) else {
                    if pending[0] == b'*' {
                        continue 'read;
                    }
                    // Not a command array: pass it on as it is.
                    if server.write_all(&pending).is_err() {
                        break 'read;
                    }
                    pending.clear();
                    break;
                };
                let taken = {
                    let mut f = fault.lock().expect("the fault");
                    let here = match f.as_ref() {
                        Some(Fault::CutAfterScript) => matches!(name.as_str(), "EVAL" | "EVALSHA"),
                        Some(Fault::BeforeWait(_)) => name == "WAIT",
                        None => false,
                    };
                    if here { f.take() } else { None }
                };
                match taken {
                    Some(Fault::CutAfterScript) => {
                        cut.store(true, Ordering::SeqCst);
                        let _ = server.write_all(&pending[..len]);
                        // Nothing after the script goes through.
                        break 'read;
                    }
                    Some(Fault::BeforeWait(hook)) => hook(),
                    None => {}
                }
                if server.write_all(&pending[..len]).is_err() {
                    break 'read;
                }
                pending.drain(..len);
            }
        }
        if !cut.load(Ordering::SeqCst) {
            let _ = server.shutdown(Shutdown::Both);
            let _ = client.shutdown(Shutdown::Both);
        }
    });
}

/// The length and upper-cased name of the complete command array at the
/// start of `buf`, `None` until all of it has arrived.
fn command(buf: &[u8]) -> Option<(usize, String)> {
    let (count, mut at) = header(buf, 0, b'*')?;
    let mut name = String::new();
    for i in 0..count {
        let (len, start) = header(buf, at, b'$')?;
        let end = start.checked_add(len)?;
        if buf.len() < end + 2 {
            return None;
        }
        if i == 0 {
            name = String::from_utf8_lossy(&buf[start..end]).to_ascii_uppercase();
        }
        at = end + 2;
    }
    Some((at, name))
}

/// `<kind><number>\r\n` at `at`: the number and where the line ends.
fn header(buf: &[u8], at: usize, kind: u8) -> Option<(usize, usize)> {
    if *buf.get(at)? != kind {
        return None;
    }
    let rest = buf.get(at + 1..)?;
    let line = rest.windows(2).position(|w| w == b"\r\n")?;
    let n = std::str::from_utf8(&rest[..line]).ok()?.parse().ok()?;
    Some((n, at + 1 + line + 2))
}

#[cfg(test)]
mod tests {
    use super::command;

    #[test]
    fn reads_whole_commands_only() {
        let cmd = b"*3\r\n$4\r\nWAIT\r\n$1\r\n1\r\n$3\r\n100\r\n";
        assert_eq!(command(cmd), Some((cmd.len(), "WAIT".to_owned())));
        assert_eq!(command(&cmd[..cmd.len() - 1]), None);
        let mut two = cmd.to_vec();
        two.extend_from_slice(b"*1\r\n$4\r\nping\r\n");
        assert_eq!(command(&two), Some((cmd.len(), "WAIT".to_owned())));
        assert_eq!(command(&two[cmd.len()..]), Some((14, "PING".to_owned())));
    }
}
