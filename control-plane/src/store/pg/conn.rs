//! Connections to PostgreSQL that the waiting thread drives itself, and their pool.
//!
//! A store call is synchronous: its thread sends a query and waits for the answer.
//! Run the usual way, as a task on a runtime, a connection costs two thread hand-offs
//! per round trip: the caller wakes a runtime thread to write the query, and that
//! thread wakes the caller again with the answer. Under 16 clients loading pages
//! that was about 40 % of the control plane's CPU. Here a connection is a
//! non-blocking socket that belongs to no runtime: the thread that waits for an
//! answer polls the connection itself, writes the query, and sleeps in `poll(2)` on
//! the socket until the kernel wakes it with the answer.
//!
//! * A [`Conn`] is used by one thread at a time (it is `Send`, not `Sync`); between
//!   store calls it waits in the [`Pool`], which hands out the most recently used.
//! * Nothing polls an idle connection. What arrived meanwhile (the answer to a
//!   reader's `COMMIT` that nobody waited for, a notice, the server closing it) is
//!   read when the pool hands it out again, and a closed one is replaced then.
//! * The cluster's listening connections need a runtime that polls them while nobody
//!   waits; they are made with the driver's own `connect` (`Pg::dedicated`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::config::{Host, LoadBalanceHosts, TargetSessionAttrs};
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{Client, Config, Connection, Statement};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::super::Unavailable;

const WANTS_READ: u8 = 1;
const WANTS_WRITE: u8 = 2;

/// What a socket's last read or write would have blocked on.
#[derive(Default)]
struct Wants(AtomicU8);

impl Wants {
    fn add(&self, bit: u8) {
        self.0.fetch_or(bit, Ordering::Relaxed);
    }

    fn take(&self) -> u8 {
        self.0.swap(0, Ordering::Relaxed)
    }

    fn has(&self, bit: u8) -> bool {
        self.0.load(Ordering::Relaxed) & bit != 0
    }
}

enum Socket {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

/// A non-blocking socket that remembers what it would have blocked on, for the
/// thread that polls it to wait for with `poll(2)`.
pub(super) struct Io {
    socket: Socket,
    wants: Arc<Wants>,
}

impl Io {
    fn fd(&self) -> RawFd {
        match &self.socket {
            Socket::Tcp(s) => s.as_raw_fd(),
            Socket::Unix(s) => s.as_raw_fd(),
        }
    }

    /// Runs a non-blocking read or write; `bit` is noted when it would block.
    fn attempt<T>(
        &mut self,
        bit: u8,
        mut op: impl FnMut(&mut Socket) -> std::io::Result<T>,
    ) -> Poll<std::io::Result<T>> {
        loop {
            match op(&mut self.socket) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    self.wants.add(bit);
                    return Poll::Pending;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                done => return Poll::Ready(done),
            }
        }
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        // Straight into the buffer's spare room, as tokio's own sockets read: zeroing it
        // first would cost a memset of the whole room (it grows to the largest answer
        // read) for every read.
        // SAFETY: nothing here writes uninitialized bytes into the buffer.
        let room = unsafe { buf.unfilled_mut() };
        let (at, len) = (room.as_mut_ptr().cast::<libc::c_void>(), room.len());
        let fd = self.fd();
        let read = self.get_mut().attempt(WANTS_READ, |_| {
            // SAFETY: `at` is valid for `len` bytes of writes (the unfilled part of
            // the buffer, which `read(2)` only writes).
            let n = unsafe { libc::read(fd, at, len) };
            usize::try_from(n).map_err(|_| std::io::Error::last_os_error())
        });
        read.map_ok(|n| {
            // SAFETY: `read(2)` wrote the first `n` bytes of the unfilled part.
            unsafe { buf.assume_init(n) };
            buf.advance(n);
        })
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.get_mut().attempt(WANTS_WRITE, |socket| match socket {
            Socket::Tcp(s) => s.write(data),
            Socket::Unix(s) => s.write(data),
        })
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        data: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.get_mut().attempt(WANTS_WRITE, |socket| match socket {
            Socket::Tcp(s) => s.write_vectored(data),
            Socket::Unix(s) => s.write_vectored(data),
        })
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // A socket keeps no buffer of its own to flush.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let shut = match &self.socket {
            Socket::Tcp(s) => s.shutdown(std::net::Shutdown::Write),
            Socket::Unix(s) => s.shutdown(std::net::Shutdown::Write),
        };
        Poll::Ready(match shut {
            Err(e) if e.kind() == std::io::ErrorKind::NotConnected => Ok(()),
            other => other,
        })
    }
}

/// A waker that only notes it was woken: whoever polls checks before sleeping.
#[derive(Default)]
struct Woken(AtomicBool);

impl Wake for Woken {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::Relaxed);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.store(true, Ordering::Relaxed);
    }
}

static BLIND_WAITS: AtomicU64 = AtomicU64::new(0);

/// How many times since start a connection's step waited on nothing its socket could
/// wake, so [`drive`] slept 10 ms and looked again: a guard against a busy loop that
/// a correct driver never needs (each one is 10 ms lost to a store call).
pub fn blind_waits() -> u64 {
    BLIND_WAITS.load(Ordering::Relaxed)
}

/// Polls `step` on this thread until it is ready, sleeping in `poll(2)` on `fd`
/// whenever a step made no progress (woke nothing) and the socket would block.
/// `None` when `deadline` passes first.
fn drive<R>(
    fd: RawFd,
    wants: &Wants,
    deadline: Option<Instant>,
    mut step: impl FnMut(&mut Context<'_>) -> Poll<R>,
) -> Option<R> {
    let woken = Arc::new(Woken::default());
    let waker = Waker::from(woken.clone());
    let mut cx = Context::from_waker(&waker);
    loop {
        woken.0.store(false, Ordering::Relaxed);
        wants.take();
        if let Poll::Ready(value) = step(&mut cx) {
            return Some(value);
        }
        if woken.0.load(Ordering::Relaxed) {
            continue;
        }
        let wanted = wants.take();
        let mut events = libc::POLLIN;
        if wanted & WANTS_WRITE != 0 {
            events |= libc::POLLOUT;
        }
        // Nothing to wait for on the socket would be a step waiting on something
        // else; look again soon rather than sleep forever.
        let mut timeout = if wanted == 0 {
            BLIND_WAITS.fetch_add(1, Ordering::Relaxed);
            10
        } else {
            -1
        };
        if let Some(deadline) = deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let left = i32::try_from(left.as_millis().max(1)).unwrap_or(i32::MAX);
            timeout = if timeout < 0 { left } else { timeout.min(left) };
        }
        let mut poll = libc::pollfd {
            fd,
            events,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call. An error (EINTR) only
        // means looking again.
        unsafe {
            libc::poll(&mut poll, 1, timeout);
        }
    }
}

type TlsStream = <<MakeRustlsConnect as MakeTlsConnect<Io>>::TlsConnect as TlsConnect<Io>>::Stream;

/// The half of a connection that talks to the socket.
struct Driver {
    /// `None` once it ended (the server closed it, or it failed): dropping it tells
    /// every query still waiting that the connection is gone.
    connection: Option<Connection<Io, TlsStream>>,
    fd: RawFd,
    wants: Arc<Wants>,
}

impl Driver {
    /// Polls the connection once: reads what arrived and writes what was asked.
    fn poll(&mut self, cx: &mut Context<'_>) {
        if let Some(connection) = self.connection.as_mut() {
            if let Poll::Ready(ended) = Pin::new(connection).poll(cx) {
                if let Err(e) = ended {
                    tracing::debug!(error = %e, "database connection ended");
                }
                self.connection = None;
            }
        }
    }

    /// [`Driver::poll`] once, waiting for nothing.
    fn poll_now(&mut self) {
        self.poll(&mut Context::from_waker(Waker::noop()));
    }

    /// Runs `step` (which polls this driver and whatever waits on it) until it is
    /// ready, sleeping on the socket in between ([`drive`]).
    fn run<R>(&mut self, mut step: impl FnMut(&mut Driver, &mut Context<'_>) -> Poll<R>) -> R {
        let (fd, wants) = (self.fd, self.wants.clone());
        drive(fd, &wants, None, |cx| step(self, cx)).expect("no deadline to pass")
    }
}

/// The error of a query whose connection is gone.
fn lost() -> anyhow::Error {
    anyhow::Error::new(Unavailable("the database connection was lost".into()))
}

/// A statement sent ahead ([`Conn::send_ahead`]): its answer is taken by the
/// connection's next wait.
pub(super) type Ahead = Pin<Box<dyn Future<Output = Result<(), tokio_postgres::Error>> + Send>>;

/// Statements a writer may have sent ahead and not had answered: past it,
/// [`Conn::send_ahead`] waits for the oldest, so what waits to be written stays
/// bounded however large the transaction.
const AHEAD_AT_ONCE: usize = 12;

/// Polls the statements sent ahead once each, keeping those still waiting; the first
/// error (in the order they were sent) goes to `failed`.
fn poll_ahead(
    ahead: &mut Vec<Ahead>,
    cx: &mut Context<'_>,
    failed: &mut Option<tokio_postgres::Error>,
) {
    ahead.retain_mut(|statement| match statement.as_mut().poll(cx) {
        Poll::Ready(Ok(())) => false,
        Poll::Ready(Err(e)) => {
            failed.get_or_insert(e);
            false
        }
        Poll::Pending => true,
    });
}

/// One connection, driven by whichever thread uses it.
pub(super) struct Conn {
    /// Taken only when the connection is dropped; shared with the statements sent
    /// ahead, which own what they send.
    client: Option<Arc<Client>>,
    /// Statements sent ahead whose answers nobody has taken yet, oldest first.
    ahead: RefCell<Vec<Ahead>>,
    /// The error of a statement sent ahead, once a wait took it: the transaction
    /// cannot commit ([`Conn::take_failed_ahead`]).
    failed_ahead: RefCell<Option<String>>,
    driver: RefCell<Driver>,
    /// Statements prepared on this connection, by their text.
    statements: RefCell<HashMap<String, Statement>>,
    /// Never to be used again (it failed in a way that leaves its state unknown).
    discarded: bool,
}

impl Conn {
    pub(super) fn client(&self) -> &Client {
        self.client
            .as_ref()
            .expect("a connection has its client until it is dropped")
    }

    /// The client, for a statement sent ahead to own.
    pub(super) fn shared_client(&self) -> Arc<Client> {
        self.client
            .clone()
            .expect("a connection has its client until it is dropped")
    }

    /// Waits for `future`, a query on this connection, driving the connection. The
    /// statements sent ahead are answered first (the server answers in order): when
    /// one of them failed, its error is the answer, since everything after it in the
    /// transaction failed for that reason only.
    pub(super) fn wait<T>(
        &self,
        future: impl Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T> {
        let mut future = pin!(future);
        let mut ahead = self.ahead.borrow_mut();
        let mut failed = None;
        let mut done = None;
        let outcome = self.driver.borrow_mut().run(|driver, cx| {
            let before = driver.connection.is_some();
            driver.poll(cx);
            // Each statement sent ahead takes its answers as they come: the connection
            // reads no further while one of them is not taken.
            poll_ahead(&mut ahead, cx, &mut failed);
            if done.is_none() {
                if let Poll::Ready(answer) = future.as_mut().poll(cx) {
                    done = Some(answer);
                }
            }
            if done.is_some() && ahead.is_empty() {
                return Poll::Ready(done.take());
            }
            if !before {
                // Gone before this step, and the query still waits: it never will be
                // answered (a query fails at once on a connection gone; this is a
                // guard, not a path).
                return Poll::Ready(done.take());
            }
            Poll::Pending
        });
        if let Some(e) = failed {
            return Err(self.note_failed_ahead(e));
        }
        match outcome {
            Some(done) => done.map_err(anyhow::Error::new),
            None => Err(lost()),
        }
    }

    /// Sends `statements` (made with [`Conn::shared_client`]) without waiting for
    /// their answers, which the next [`Conn::wait`] takes: a writer's changes go to
    /// the server while the writer goes on, so the database inserts one part of a
    /// large transaction while the next part is built. Writes what the socket takes
    /// now; the rest goes out with the next use. Past [`AHEAD_AT_ONCE`] statements
    /// unanswered, waits for the oldest.
    pub(super) fn send_ahead(&self, statements: Vec<Ahead>) -> Result<()> {
        let mut ahead = self.ahead.borrow_mut();
        ahead.extend(statements);
        let mut failed = None;
        let gone = self.driver.borrow_mut().run(|driver, cx| {
            // Polled once, a statement hands its request to the connection, which
            // writes it in order with the rest.
            poll_ahead(&mut ahead, cx, &mut failed);
            driver.poll(cx);
            if driver.connection.is_none() {
                return Poll::Ready(true);
            }
            if failed.is_some() || ahead.len() <= AHEAD_AT_ONCE {
                return Poll::Ready(false);
            }
            Poll::Pending
        });
        if let Some(e) = failed {
            return Err(self.note_failed_ahead(e));
        }
        if gone {
            return Err(lost());
        }
        Ok(())
    }

    /// Notes that a statement sent ahead failed (the transaction cannot commit), and
    /// gives its error.
    fn note_failed_ahead(&self, e: tokio_postgres::Error) -> anyhow::Error {
        let e = anyhow::Error::new(e);
        self.failed_ahead
            .borrow_mut()
            .get_or_insert_with(|| format!("{e:#}"));
        e
    }

    /// Waits for the answers to the statements sent ahead, and forgets whether one
    /// failed: `Some(error)` when one did (since the last call), in which case the
    /// server ends the transaction with a rollback whatever it is told.
    pub(super) fn take_failed_ahead(&self) -> Option<String> {
        if !self.ahead.borrow().is_empty() {
            let _ = self.wait(async { Ok(()) });
        }
        self.failed_ahead.borrow_mut().take()
    }

    /// Sends `sql` (no answer expected by anyone) and returns once it is written: the
    /// answer is read and dropped by the connection's next use.
    pub(super) fn send_only(&self, sql: &str) -> Result<()> {
        use futures::FutureExt;
        if let Some(Err(e)) = self.client().batch_execute(sql).now_or_never() {
            return Err(e.into());
        }
        let mut driver = self.driver.borrow_mut();
        driver.run(|driver, cx| {
            driver.poll(cx);
            // Until the socket took everything: only a write that would block waits.
            if driver.connection.is_none() || !driver.wants.has(WANTS_WRITE) {
                return Poll::Ready(());
            }
            Poll::Pending
        });
        if driver.connection.is_none() {
            return Err(lost());
        }
        Ok(())
    }

    /// A statement prepared on this connection, once per connection and text.
    pub(super) fn prepared(&self, sql: &str) -> Result<Statement> {
        if let Some(statement) = self.statements.borrow().get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.wait(self.client().prepare(sql))?;
        self.statements
            .borrow_mut()
            .insert(sql.to_string(), statement.clone());
        Ok(statement)
    }

    /// Marks the connection never to be used again.
    pub(super) fn discard(&mut self) {
        self.discarded = true;
    }

    /// Neither discarded nor ended.
    fn alive(&mut self) -> bool {
        !self.discarded && self.driver.get_mut().connection.is_some()
    }

    /// Reads what arrived while it was idle, without waiting; false when it is closed
    /// or discarded.
    fn usable(&mut self) -> bool {
        if !self.discarded {
            self.driver.get_mut().poll_now();
        }
        self.alive()
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // The client's end closes with it; one more poll of a healthy connection sends
        // the server its goodbye (`Terminate`) instead of a dropped socket.
        if !self.discarded {
            // The statements sent ahead share the client: they go first.
            self.ahead.get_mut().clear();
            self.client = None;
            self.driver.get_mut().poll_now();
        }
    }
}

/// Opens a connection as `config` says: its hosts in the order given (shuffled with
/// `load_balance_hosts=random`), each address of a host name in turn, each within the
/// URL's `connect_timeout` or `timeout`.
fn connect(config: &Config, tls: &MakeRustlsConnect, timeout: Duration) -> Result<Conn> {
    let hosts = config.get_hosts();
    let hostaddrs = config.get_hostaddrs();
    let ports = config.get_ports();
    let count = hosts.len().max(hostaddrs.len());
    anyhow::ensure!(count > 0, "the database URL names no host");
    let mut order: Vec<usize> = (0..count).collect();
    if config.get_load_balance_hosts() == LoadBalanceHosts::Random {
        use rand::seq::SliceRandom;
        order.shuffle(&mut rand::thread_rng());
    }
    let timeout = config.get_connect_timeout().copied().unwrap_or(timeout);
    let mut failed = None;
    for i in order {
        let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
        let host = hosts.get(i);
        let hostname = match host {
            Some(Host::Tcp(name)) => Some(name.as_str()),
            _ => None,
        };
        let attempts: Vec<Result<Socket>> = match (hostaddrs.get(i), host) {
            (Some(ip), _) => vec![tcp(config, std::net::SocketAddr::new(*ip, port), timeout)],
            (None, Some(Host::Tcp(name))) => {
                use std::net::ToSocketAddrs;
                match (name.as_str(), port).to_socket_addrs() {
                    Ok(addrs) => addrs.map(|addr| tcp(config, addr, timeout)).collect(),
                    Err(e) => vec![Err(anyhow::anyhow!("cannot resolve {name}: {e}"))],
                }
            }
            (None, Some(Host::Unix(dir))) => {
                let path = dir.join(format!(".s.PGSQL.{port}"));
                vec![std::os::unix::net::UnixStream::connect(&path)
                    .and_then(|s| s.set_nonblocking(true).map(|()| Socket::Unix(s)))
                    .map_err(|e| anyhow::anyhow!("cannot connect to {}: {e}", path.display()))]
            }
            (None, _) => vec![Err(anyhow::anyhow!("the database URL names no host"))],
        };
        for socket in attempts {
            match socket.and_then(|s| start(config, tls, s, hostname, timeout)) {
                Ok(conn) => return Ok(conn),
                Err(e) => failed = Some(e),
            }
        }
    }
    Err(failed.unwrap_or_else(|| anyhow::anyhow!("the database host has no address")))
}

/// A TCP connection to `addr`, non-blocking, with the URL's keepalive settings.
fn tcp(config: &Config, addr: std::net::SocketAddr, timeout: Duration) -> Result<Socket> {
    let stream = std::net::TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| anyhow::anyhow!("cannot connect to {addr}: {e}"))?;
    stream.set_nodelay(true)?;
    let socket = socket2::SockRef::from(&stream);
    if let Some(user_timeout) = config.get_tcp_user_timeout() {
        socket.set_tcp_user_timeout(Some(*user_timeout))?;
    }
    if config.get_keepalives() {
        let mut keepalive = socket2::TcpKeepalive::new().with_time(config.get_keepalives_idle());
        if let Some(interval) = config.get_keepalives_interval() {
            keepalive = keepalive.with_interval(interval);
        }
        if let Some(retries) = config.get_keepalives_retries() {
            keepalive = keepalive.with_retries(retries);
        }
        socket.set_tcp_keepalive(&keepalive)?;
    }
    stream.set_nonblocking(true)?;
    Ok(Socket::Tcp(stream))
}

/// Runs the startup (TLS as `sslmode` says, authentication) on a connected socket,
/// then checks `target_session_attrs`.
fn start(
    config: &Config,
    tls: &MakeRustlsConnect,
    socket: Socket,
    hostname: Option<&str>,
    timeout: Duration,
) -> Result<Conn> {
    let wants = Arc::new(Wants::default());
    let io = Io {
        socket,
        wants: wants.clone(),
    };
    let fd = io.fd();
    let tls = match MakeTlsConnect::<Io>::make_tls_connect(&mut tls.clone(), hostname.unwrap_or(""))
    {
        Ok(tls) => tls,
        Err(never) => match never {},
    };
    let mut starting = pin!(config.connect_raw(io, tls));
    let (client, connection) = drive(fd, &wants, Some(Instant::now() + timeout), |cx| {
        starting.as_mut().poll(cx)
    })
    .ok_or_else(|| anyhow::anyhow!("no answer from the database within {timeout:?}"))??;
    let conn = Conn {
        client: Some(Arc::new(client)),
        ahead: RefCell::new(Vec::new()),
        failed_ahead: RefCell::new(None),
        driver: RefCell::new(Driver {
            connection: Some(connection),
            fd,
            wants,
        }),
        statements: RefCell::default(),
        discarded: false,
    };
    conn.wait(conn.client().batch_execute(super::SESSION_SETUP))?;
    let wanted = match config.get_target_session_attrs() {
        TargetSessionAttrs::ReadWrite => "off",
        TargetSessionAttrs::ReadOnly => "on",
        _ => return Ok(conn),
    };
    let rows = conn.wait(conn.client().query_one("SHOW transaction_read_only", &[]))?;
    let read_only: String = rows.get(0);
    anyhow::ensure!(
        read_only == wanted,
        "the database's transaction_read_only is {read_only}, and the URL asks target_session_attrs for {wanted}"
    );
    Ok(conn)
}

/// Connections made as needed up to a limit, the most recently used handed out first.
pub(super) struct Pool(Arc<Shared>);

struct Shared {
    state: Mutex<State>,
    freed: Condvar,
    size: usize,
    wait: Duration,
    config: Config,
    tls: MakeRustlsConnect,
}

struct State {
    idle: Vec<Conn>,
    /// Connections idle, in use or being made.
    open: usize,
}

impl Pool {
    /// At most `size` connections; a caller waits at most `wait` for one.
    pub(super) fn new(config: Config, tls: MakeRustlsConnect, size: usize, wait: Duration) -> Pool {
        Pool(Arc::new(Shared {
            state: Mutex::new(State {
                idle: Vec::new(),
                open: 0,
            }),
            freed: Condvar::new(),
            size,
            wait,
            config,
            tls,
        }))
    }

    /// A connection: an idle one still open, else a new one while fewer than the
    /// limit are open, else the next one freed. [`Unavailable`] when none can be had.
    pub(super) fn get(&self) -> Result<Pooled> {
        let shared = &self.0;
        let deadline = Instant::now() + shared.wait;
        let mut state = shared.lock();
        loop {
            if let Some(mut conn) = state.idle.pop() {
                drop(state);
                if conn.usable() {
                    return Ok(Pooled {
                        conn: Some(conn),
                        pool: shared.clone(),
                    });
                }
                drop(conn);
                state = shared.lock();
                state.open -= 1;
                continue;
            }
            if state.open < shared.size {
                state.open += 1;
                drop(state);
                return match connect(&shared.config, &shared.tls, shared.wait) {
                    Ok(conn) => Ok(Pooled {
                        conn: Some(conn),
                        pool: shared.clone(),
                    }),
                    Err(e) => {
                        shared.lock().open -= 1;
                        shared.freed.notify_one();
                        Err(anyhow::Error::new(Unavailable(format!(
                            "no database connection: {e:#}"
                        ))))
                    }
                };
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(anyhow::Error::new(Unavailable(format!(
                    "no database connection: all {} were busy for {:?}",
                    shared.size, shared.wait
                ))));
            }
            state = shared
                .freed
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A connection taken from the [`Pool`]; dropped, it goes back (or, closed or
/// discarded, makes room for a new one).
pub(super) struct Pooled {
    conn: Option<Conn>,
    pool: Arc<Shared>,
}

impl std::ops::Deref for Pooled {
    type Target = Conn;

    fn deref(&self) -> &Conn {
        self.conn
            .as_ref()
            .expect("a pooled connection until it is dropped")
    }
}

impl std::ops::DerefMut for Pooled {
    fn deref_mut(&mut self) -> &mut Conn {
        self.conn
            .as_mut()
            .expect("a pooled connection until it is dropped")
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        let keep = conn.alive();
        let mut state = self.pool.lock();
        if keep {
            state.idle.push(conn);
            drop(state);
        } else {
            state.open -= 1;
            drop(state);
            drop(conn);
        }
        self.pool.freed.notify_one();
    }
}
