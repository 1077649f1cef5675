//! Interactive terminals (fleet protocol 3): a login shell of the agent's user on a
//! PTY, served over one stream the control plane opens ([`ToAgent::TerminalOpen`]).
//!
//! The PTY's output goes back in frames of at most [`MAX_TERMINAL_FRAME`] bytes, read
//! only as fast as the stream takes them (QUIC flow control), so a viewer that stops
//! reading stops the shell's output instead of growing a buffer. Input is written by a
//! task of its own, so a shell that does not read its input never blocks its output.
//! A terminal ends when its shell exits, when the control plane sends
//! [`ToAgent::TerminalClose`] or closes the stream, or when the connection ends: the
//! shell's session is hung up (`SIGHUP`, then `SIGKILL` after
//! [`HANGUP_GRACE`]). Nothing of a terminal is written to disk.
//!
//! At most [`Terminals::limit`] terminals run at once (`DYNSERV_AGENT_MAX_TERMINALS`,
//! default [`DEFAULT_MAX_TERMINALS`]); one more is refused with
//! [`FromAgent::Rejected`].

use std::ffi::CStr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use dynserv_shared::frame::{read_frame, write_frame};
use dynserv_shared::proto::{FromAgent, TerminalSize, ToAgent, MAX_TERMINAL_FRAME};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::oneshot;

/// The environment variable that sets how many terminals may run at once.
pub const MAX_TERMINALS_ENV: &str = "DYNSERV_AGENT_MAX_TERMINALS";

/// Terminals that may run at once when [`MAX_TERMINALS_ENV`] is not set.
pub const DEFAULT_MAX_TERMINALS: usize = 4;

/// How long a hung-up shell may take to exit before its session is killed.
pub const HANGUP_GRACE: Duration = Duration::from_secs(2);

/// The count of running terminals and its limit; cheap to clone.
#[derive(Clone)]
pub struct Terminals {
    running: Arc<AtomicUsize>,
    limit: usize,
}

impl Terminals {
    /// A limit of `limit` terminals at once (0 turns terminals off on this agent).
    pub fn new(limit: usize) -> Terminals {
        Terminals {
            running: Arc::default(),
            limit,
        }
    }

    /// The limit from [`MAX_TERMINALS_ENV`], else [`DEFAULT_MAX_TERMINALS`]; a value
    /// that is not a number is reported and the default used.
    pub fn from_env() -> Terminals {
        let limit = match std::env::var(MAX_TERMINALS_ENV) {
            Ok(text) => text.trim().parse().unwrap_or_else(|_| {
                tracing::warn!(
                    "{MAX_TERMINALS_ENV}={text:?} is not a number; using {DEFAULT_MAX_TERMINALS}"
                );
                DEFAULT_MAX_TERMINALS
            }),
            Err(_) => DEFAULT_MAX_TERMINALS,
        };
        Terminals::new(limit)
    }

    /// How many terminals may run at once.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Terminals running now.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Relaxed)
    }

    /// A slot for one more terminal, or `None` at the limit. The slot is given back
    /// when dropped.
    pub fn try_acquire(&self) -> Option<Slot> {
        self.running
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.limit).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot {
                running: self.running.clone(),
            })
    }
}

/// One running terminal's place in [`Terminals`].
pub struct Slot {
    running: Arc<AtomicUsize>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.running.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The agent user's login shell and home directory (from the password database),
/// with `/bin/sh` and `/` when it has no entry.
fn login_account() -> (String, String, String) {
    // SAFETY: getuid cannot fail; getpwuid_r writes into our buffer and record only,
    // and the pointers it returns point into them while they live.
    unsafe {
        let uid = libc::getuid();
        let mut record: libc::passwd = std::mem::zeroed();
        let mut buffer = vec![0 as libc::c_char; 16 * 1024];
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwuid_r(
            uid,
            &mut record,
            buffer.as_mut_ptr(),
            buffer.len(),
            &mut found,
        );
        let text = |p: *const libc::c_char| {
            if p.is_null() {
                String::new()
            } else {
                CStr::from_ptr(p).to_string_lossy().into_owned()
            }
        };
        if rc != 0 || found.is_null() {
            return ("/bin/sh".into(), "/".into(), uid.to_string());
        }
        let mut shell = text(record.pw_shell);
        if shell.is_empty() || !std::path::Path::new(&shell).exists() {
            shell = "/bin/sh".into();
        }
        let mut home = text(record.pw_dir);
        if home.is_empty() || !std::path::Path::new(&home).is_dir() {
            home = "/".into();
        }
        (shell, home, text(record.pw_name))
    }
}

fn winsize(size: TerminalSize) -> libc::winsize {
    let size = size.clamped();
    libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

fn set_cloexec(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: fcntl on a descriptor we own.
    let rc = unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn set_nonblocking(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A new PTY pair of `size`: (master, slave), both close-on-exec.
fn open_pty(size: TerminalSize) -> Result<(OwnedFd, OwnedFd)> {
    let mut master: libc::c_int = -1;
    let mut slave: libc::c_int = -1;
    let ws = winsize(size);
    // SAFETY: openpty writes two descriptors into our integers; it reads the window
    // size we pass and no name or termios (null).
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &ws,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("opening a PTY");
    }
    // SAFETY: openpty succeeded, so both descriptors are open and ours alone.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    set_cloexec(master.as_raw_fd())?;
    set_cloexec(slave.as_raw_fd())?;
    Ok((master, slave))
}

/// A shell on a PTY.
struct Pty {
    master: AsyncFd<OwnedFd>,
    child: tokio::process::Child,
    /// The shell's process group (its session's), for hanging it up.
    pgid: i32,
    shell: String,
}

impl Pty {
    /// Starts the agent user's login shell on a new PTY of `size`, in its home
    /// directory, with a small clean environment (none of the agent's own variables).
    fn spawn(size: TerminalSize) -> Result<Pty> {
        let (master, slave) = open_pty(size)?;
        let (shell, home, user) = login_account();
        let name = std::path::Path::new(&shell)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "sh".into());
        let mut command = std::process::Command::new(&shell);
        // A leading '-' in argv[0] is how login(1) asks any shell for a login shell.
        command
            .arg0(format!("-{name}"))
            .env_clear()
            .env("TERM", "xterm-256color")
            .env("HOME", &home)
            .env("SHELL", &shell)
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .current_dir(&home)
            .stdin(slave.try_clone().context("sharing the PTY")?)
            .stdout(slave.try_clone().context("sharing the PTY")?)
            .stderr(slave);
        if !user.is_empty() {
            command.env("USER", &user).env("LOGNAME", &user);
        }
        for kept in ["LANG", "LC_ALL", "TZ"] {
            if let Ok(value) = std::env::var(kept) {
                command.env(kept, value);
            }
        }
        // SAFETY: only async-signal-safe calls between fork and exec: a new session
        // (so the shell has no tie to the agent's) whose controlling terminal is the
        // PTY on its standard input.
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut command = tokio::process::Command::from(command);
        command.kill_on_drop(true);
        let child = command
            .spawn()
            .with_context(|| format!("starting {shell}"))?;
        let pgid = child.id().map(|id| id as i32).unwrap_or(0);
        set_nonblocking(master.as_raw_fd())?;
        // SAFETY: an OwnedFd's descriptor stays open, and the same, until the OwnedFd is
        // dropped, which happens only with the AsyncFd that owns it.
        let master = unsafe {
            AsyncFd::register_with_interest(master, Interest::READABLE | Interest::WRITABLE)
        }
        .map_err(std::io::Error::from)
        .context("watching the PTY")?;
        Ok(Pty {
            master,
            child,
            pgid,
            shell,
        })
    }

    /// Reads what the shell wrote; `Ok(0)` once the shell's side is closed (Linux
    /// answers EIO then).
    async fn read(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let mut guard = self.master.readable().await?;
            let result = guard.try_io(|fd| {
                // SAFETY: read into our buffer from our descriptor.
                let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                if n < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match result {
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes all of `data` to the shell's input.
    async fn write_all(&self, mut data: &[u8]) -> std::io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.master.writable().await?;
            let result = guard.try_io(|fd| {
                // SAFETY: write from our buffer to our descriptor.
                let n = unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) };
                if n < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match result {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }

    /// Sets the window size; the kernel tells the shell (`SIGWINCH`).
    fn resize(&self, size: TerminalSize) -> std::io::Result<()> {
        let ws = winsize(size);
        // SAFETY: TIOCSWINSZ reads the winsize we pass.
        let rc = unsafe {
            libc::ioctl(
                self.master.get_ref().as_raw_fd(),
                libc::TIOCSWINSZ as _,
                &ws,
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    fn signal(&self, signal: libc::c_int) {
        if self.pgid > 0 {
            // SAFETY: kill(2) with a negative pid signals the shell's process group.
            unsafe {
                libc::kill(-self.pgid, signal);
            }
        }
    }

    /// Ends the shell (hang-up, then kill after [`HANGUP_GRACE`]) unless it already
    /// exited; returns its exit code when it exited with one.
    async fn finish(mut self, hang_up: bool) -> Option<i32> {
        if hang_up {
            self.signal(libc::SIGHUP);
        }
        let status = match tokio::time::timeout(HANGUP_GRACE, self.child.wait()).await {
            Ok(status) => status.ok(),
            Err(_) => {
                self.signal(libc::SIGKILL);
                let _ = self.child.start_kill();
                self.child.wait().await.ok()
            }
        };
        status.and_then(|s| s.code())
    }
}

/// Why the output loop ended.
enum Ended {
    /// The shell closed its side of the PTY (it exited).
    ShellExited,
    /// The control plane asked to close (or its side of the stream ended).
    Closed,
}

/// Serves one terminal stream whose first message was [`ToAgent::TerminalOpen`] with
/// `size`; returns when the terminal is over.
pub async fn serve(
    terminals: &Terminals,
    size: TerminalSize,
    send: &mut quinn::SendStream,
    recv: quinn::RecvStream,
) -> Result<()> {
    let Some(_slot) = terminals.try_acquire() else {
        let reason = format!(
            "this agent already runs {} terminal(s), its limit ({MAX_TERMINALS_ENV}); close one first",
            terminals.limit()
        );
        write_frame(
            send,
            &FromAgent::Rejected {
                reason,
                not_started_here: false,
            },
        )
        .await?;
        let _ = send.finish();
        return Ok(());
    };
    let pty = match Pty::spawn(size) {
        Ok(pty) => Arc::new(pty),
        Err(e) => {
            write_frame(
                send,
                &FromAgent::Rejected {
                    reason: format!("{e:#}"),
                    not_started_here: false,
                },
            )
            .await?;
            let _ = send.finish();
            return Ok(());
        }
    };
    tracing::info!(shell = %pty.shell, "terminal opened");
    write_frame(
        send,
        &FromAgent::TerminalOpened {
            shell: pty.shell.clone(),
        },
    )
    .await?;
    // Input, resizes and the close request, on a task of their own.
    let (closed_tx, mut closed_rx) = oneshot::channel::<()>();
    let input = tokio::spawn(pump_input(pty.clone(), recv, closed_tx));
    let mut buf = vec![0u8; MAX_TERMINAL_FRAME];
    let ended: Result<Ended> = async {
        loop {
            tokio::select! {
                read = pty.read(&mut buf) => {
                    let n = read.context("reading the PTY")?;
                    if n == 0 {
                        return Ok(Ended::ShellExited);
                    }
                    let data = base64::engine::general_purpose::STANDARD.encode(&buf[..n]);
                    write_frame(send, &FromAgent::TerminalOutput { data }).await?;
                }
                _ = &mut closed_rx => return Ok(Ended::Closed),
            }
        }
    }
    .await;
    input.abort();
    let _ = input.await;
    let Ok(pty) = Arc::try_unwrap(pty) else {
        bail!("the terminal's input task still holds the PTY");
    };
    let hang_up = !matches!(ended, Ok(Ended::ShellExited));
    let exit_code = pty.finish(hang_up).await;
    let reason = match (&ended, exit_code) {
        (Ok(Ended::ShellExited), Some(code)) => format!("the shell exited with code {code}"),
        (Ok(Ended::ShellExited), None) => "the shell ended".to_string(),
        (Ok(Ended::Closed), _) => "closed".to_string(),
        (Err(e), _) => format!("{e:#}"),
    };
    tracing::info!("terminal ended: {reason}");
    // The stream may be gone already (that is often why the terminal ended).
    let _ = write_frame(send, &FromAgent::TerminalClosed { reason, exit_code }).await;
    let _ = send.finish();
    ended.map(|_| ())
}

/// Applies the control plane's frames to the PTY until it asks to close or its side
/// of the stream ends; then signals `closed`.
async fn pump_input(pty: Arc<Pty>, mut recv: quinn::RecvStream, closed: oneshot::Sender<()>) {
    loop {
        match read_frame::<ToAgent, _>(&mut recv).await {
            Ok(Some(ToAgent::TerminalInput { data })) => {
                let bytes = match base64::engine::general_purpose::STANDARD.decode(data) {
                    Ok(bytes) if bytes.len() <= MAX_TERMINAL_FRAME => bytes,
                    _ => {
                        tracing::warn!("bad terminal input from the control plane");
                        break;
                    }
                };
                if let Err(e) = pty.write_all(&bytes).await {
                    tracing::debug!("writing to the PTY: {e}");
                    break;
                }
            }
            Ok(Some(ToAgent::TerminalResize(size))) => {
                if let Err(e) = pty.resize(size) {
                    tracing::debug!("resizing the PTY: {e}");
                }
            }
            Ok(Some(ToAgent::TerminalClose)) | Ok(None) => break,
            Ok(Some(_)) => {
                tracing::warn!("a job message on a terminal stream");
                break;
            }
            Err(e) => {
                tracing::warn!("bad frame from the control plane: {e}");
                break;
            }
        }
    }
    let _ = closed.send(());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The limit is enforced and a slot comes back when its terminal ends.
    #[test]
    fn terminal_limit_counts_slots() {
        let terminals = Terminals::new(2);
        let a = terminals.try_acquire().expect("first");
        let _b = terminals.try_acquire().expect("second");
        assert!(terminals.try_acquire().is_none());
        assert_eq!(terminals.running(), 2);
        drop(a);
        assert!(terminals.try_acquire().is_some());
        assert!(Terminals::new(0).try_acquire().is_none());
    }

    /// A shell on a real PTY: what is typed runs, output comes back, the size set is
    /// the one the shell sees, and closing hangs it up.
    #[tokio::test]
    async fn pty_runs_a_shell() {
        let pty = Pty::spawn(TerminalSize { cols: 80, rows: 24 }).expect("a PTY");
        pty.resize(TerminalSize {
            cols: 101,
            rows: 33,
        })
        .unwrap();
        pty.write_all(b"echo out-$((6*7)); stty size\n")
            .await
            .unwrap();
        let mut seen = String::new();
        let mut buf = vec![0u8; 4096];
        while !(seen.contains("out-42") && seen.contains("33 101")) {
            let n = tokio::time::timeout(Duration::from_secs(20), pty.read(&mut buf))
                .await
                .expect("output in time")
                .unwrap();
            assert!(n > 0, "the shell ended early: {seen}");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        pty.finish(true).await;
    }
}
