//! Support for the integration tests: a real, throw-away `redis-server`.
//!
//! Modelled on redis-rs's own test support. Every [`RedisServer`] is a
//! separate `redis-server` process on a free loopback port, with no
//! persistence and its own temporary directory. It is killed and reaped
//! when the value is dropped. On Linux it is also killed when the test
//! process ends in any way (a server kept in a `static`, which is never
//! dropped, an abort, a SIGKILL), so no run leaves a server behind.
//!
//! [`shared_server`] is one server for a whole test binary, for tests that
//! only need *a* server and use their own key prefixes.
//!
//! There is no skipping: if `redis-server` is not installed the tests panic
//! and say how to install it.

// Each test binary compiles this module on its own and uses only part of it.
#![allow(dead_code)]

pub mod children;
pub mod cluster;

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock, mpsc};
use std::thread;
use std::time::{Duration, Instant};

/// How long a fresh server may take to answer PING.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How many ports to try before giving up (a free port can be taken by
/// someone else between our probe and the server's bind).
const START_ATTEMPTS: usize = 5;

/// A `redis-server` child process on `127.0.0.1:<port>`.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    extra_args: Vec<String>,
    password: Option<String>,
}

impl RedisServer {
    /// Starts a server with the default settings.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server with extra command-line arguments, such as
    /// `&["--requirepass", "s3cret"]`.
    pub fn start_with(extra_args: &[&str]) -> Self {
        let binary = redis_server_binary();
        let extra_args: Vec<String> = extra_args.iter().map(|arg| (*arg).to_owned()).collect();
        let password = extra_args
            .iter()
            .position(|arg| arg == "--requirepass")
            .and_then(|at| extra_args.get(at + 1).cloned());
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            let dir = fresh_dir(port);
            let mut server = RedisServer {
                child: None,
                port,
                dir,
                extra_args: extra_args.clone(),
                password: password.clone(),
            };
            match server.spawn(&binary) {
                Ok(()) => return server,
                // Dropping `server` kills the process and removes its directory.
                Err(why) => failures.push(format!("port {port}: {why}")),
            }
        }
        panic!(
            "redis-server did not come up after {START_ATTEMPTS} attempts:\n{}",
            failures.join("\n")
        );
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>/0`, with no password even if the server
    /// requires one.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The server's process id (panics if it was stopped).
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .expect("the redis-server was stopped")
            .id()
    }

    /// The server's own directory (for a `--unixsocket` path, say).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A plain synchronous connection to database 0, authenticated if the
    /// server was started with `--requirepass`, for inspecting what the code
    /// under test wrote.
    pub fn connection(&self) -> redis::Connection {
        self.connection_to_db(0)
    }

    /// Like [`RedisServer::connection`], on database `db`.
    pub fn connection_to_db(&self, db: i64) -> redis::Connection {
        let url = match &self.password {
            Some(password) => format!("redis://:{password}@127.0.0.1:{}/{db}", self.port),
            None => format!("redis://127.0.0.1:{}/{db}", self.port),
        };
        let client = redis::Client::open(url).expect("a loopback URL parses");
        let connection = client
            .get_connection_with_timeout(Duration::from_secs(5))
            .expect("connect to the test redis-server");
        connection
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("set a read timeout");
        connection
            .set_write_timeout(Some(Duration::from_secs(5)))
            .expect("set a write timeout");
        connection
    }

    /// Kills the server (SIGKILL) and reaps it. The port stays reserved for
    /// [`RedisServer::restart`] only by luck; nothing else should take it
    /// in the short time a test needs.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (stopping it first if it
    /// still runs). Panics if it does not come up.
    pub fn restart(&mut self) {
        self.stop();
        let binary = redis_server_binary();
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last_failure = String::new();
        // The old process released the port when it died, but give the
        // kernel a few tries in case it is slow to.
        while Instant::now() < deadline {
            match self.spawn(&binary) {
                Ok(()) => return,
                Err(why) => last_failure = why,
            }
            thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "redis-server did not restart on port {}: {last_failure}",
            self.port
        );
    }

    /// Spawns the process and waits until it answers PING.
    fn spawn(&mut self, binary: &Path) -> Result<(), String> {
        let stderr = std::fs::File::create(self.dir.join("stderr.log"))
            .map_err(|error| format!("cannot create {}: {error}", self.dir.display()))?;
        let mut command = Command::new(binary);
        command
            .arg("--port")
            .arg(self.port.to_string())
            .args([
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.dir.join("redis.log"))
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let mut child = spawn_for_the_process(command)
            .map_err(|error| format!("cannot run {}: {error}", binary.display()))?;
        let ready = self.wait_until_ready(&mut child);
        if let Err(why) = ready {
            let _ = child.kill();
            let _ = child.wait();
            let mut output =
                std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default();
            output += &std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
            return Err(format!("{why}; its output:\n{output}"));
        }
        self.child = Some(child);
        Ok(())
    }

    /// Polls (bounded) until the server answers PING with any reply: `+PONG`,
    /// or `-NOAUTH` when it needs a password, which still proves it is up.
    fn wait_until_ready(&self, child: &mut Child) -> Result<(), String> {
        let started = Instant::now();
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        while started.elapsed() < READY_TIMEOUT {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("redis-server exited early with {status}"));
            }
            if let Ok(reply) = ping(address)
                && (reply.starts_with('+') || reply.starts_with('-'))
            {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(20));
        }
        Err(format!("no answer to PING within {READY_TIMEOUT:?}"))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Sends one inline PING and returns the first line of the reply.
fn ping(address: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_millis(200))?;
    stream.set_read_timeout(Some(Duration::from_millis(500)))?;
    stream.write_all(b"PING\r\n")?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    Ok(line)
}

/// A loopback port nothing listens on right now (the OS picks it).
pub fn free_port() -> u16 {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind an ephemeral loopback port");
    listener
        .local_addr()
        .expect("local address of a bound listener")
        .port()
}

/// The `redis-server` on PATH; panics with install instructions if there is none.
fn redis_server_binary() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("redis-server"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "these tests need a real `redis-server` on PATH and none was found. Install it: \
                 `apt-get install redis-server` on Debian/Ubuntu, `brew install redis` on macOS."
            )
        })
}

/// A new, empty directory for one server.
fn fresh_dir(port: u16) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    static SWEPT: std::sync::Once = std::sync::Once::new();
    SWEPT.call_once(sweep_dead_dirs);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("{DIR_PREFIX}{}-{port}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a temporary directory for redis-server");
    dir
}

const DIR_PREFIX: &str = "cachify-test-redis-";

/// Removes the directories of servers whose test process is gone without
/// dropping them (a server kept in a `static` is never dropped).
fn sweep_dead_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|name| name.strip_prefix(DIR_PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        // SAFETY: signal 0 only checks whether the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH);
        if !alive {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// One server for the whole test binary, started on first use. It lives
/// until the process ends (see the module docs for how it is then killed).
pub fn shared_server() -> &'static RedisServer {
    static SHARED: OnceLock<RedisServer> = OnceLock::new();
    SHARED.get_or_init(RedisServer::start)
}

/// Spawns `command` so that the kernel SIGKILLs it when this test process
/// ends, however it ends.
///
/// Linux's parent-death signal fires when the *thread* that forked the
/// child exits, and test threads come and go (a server kept in a `static`
/// may be started by any test). So every server is forked by one keeper
/// thread that lives as long as the process.
#[cfg(target_os = "linux")]
fn spawn_for_the_process(mut command: Command) -> std::io::Result<Child> {
    type Request = (Command, mpsc::Sender<std::io::Result<Child>>);
    static KEEPER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();

    die_with_the_parent(&mut command);
    let keeper = KEEPER.get_or_init(|| {
        let (requests, incoming) = mpsc::channel::<Request>();
        thread::Builder::new()
            .name("redis-server-keeper".into())
            .spawn(move || {
                // Never ends: the static sender is never dropped.
                for (mut command, reply) in incoming {
                    let _ = reply.send(command.spawn());
                }
            })
            .expect("start the redis-server keeper thread");
        Mutex::new(requests)
    });
    let (reply, spawned) = mpsc::channel();
    keeper
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .send((command, reply))
        .expect("keeper thread alive");
    spawned.recv().expect("keeper thread answers")
}

#[cfg(not(target_os = "linux"))]
fn spawn_for_the_process(mut command: Command) -> std::io::Result<Child> {
    command.spawn()
}

/// Aborts the whole test process if it is still alive after `limit`, so a
/// deadlock fails loudly instead of hanging the suite. Disarmed on drop.
pub struct Deadline {
    disarm: Option<mpsc::Sender<()>>,
}

impl Deadline {
    pub fn new(limit: Duration, what: &'static str) -> Self {
        let (disarm, disarmed) = mpsc::channel::<()>();
        thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = disarmed.recv_timeout(limit) {
                eprintln!(
                    "DEADLOCK: `{what}` did not finish within {limit:?}; aborting the test process"
                );
                std::process::abort();
            }
        });
        Deadline {
            disarm: Some(disarm),
        }
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        // Dropping the sender wakes the watcher with `Disconnected`.
        self.disarm.take();
    }
}

/// A server of a test's own, in a `static` so that `client = ..` attributes
/// can reach its client, and that the test may stop or restart without
/// touching any other test. The client has short timeouts, so calls during
/// an outage fail fast.
pub struct OwnServer {
    server: Mutex<Option<RedisServer>>,
    client: OnceLock<cachify::Cachify>,
}

impl OwnServer {
    pub const fn new() -> Self {
        OwnServer {
            server: Mutex::new(None),
            client: OnceLock::new(),
        }
    }

    /// The client, starting the server on first use.
    pub fn client(&self) -> &cachify::Cachify {
        self.client.get_or_init(|| {
            let server = RedisServer::start();
            let client = cachify::Cachify::builder()
                .redis(server.url())
                .command_timeout(Duration::from_millis(200))
                .connect_timeout(Duration::from_millis(200))
                .build_blocking()
                .expect("connect to the test's own redis-server");
            *self.lock() = Some(server);
            client
        })
    }

    /// Kills the server for good.
    pub fn stop(&self) {
        drop(self.lock().take());
    }

    /// Kills the server and starts it again, empty, on the same port.
    pub fn restart(&self) {
        self.lock()
            .as_mut()
            .expect("the server was started and not stopped")
            .restart();
    }

    /// A raw connection for inspection.
    pub fn connection(&self) -> redis::Connection {
        self.lock()
            .as_ref()
            .expect("the server was started and not stopped")
            .connection()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<RedisServer>> {
        self.server
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Has the kernel SIGKILL `command`'s process when the thread that spawns
/// it ends (for a test's child process: when the test ends, however it ends).
#[cfg(target_os = "linux")]
pub fn die_with_the_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe, and the closure touches nothing
    // else between fork and exec.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) == -1
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Pauses (SIGSTOP) a server for the life of the value, as a stalled Redis;
/// resumes it (SIGCONT) on drop.
pub struct Frozen(u32);

impl Frozen {
    pub fn new(server: &RedisServer) -> Self {
        // SAFETY: a plain signal to our own child process.
        let paused = unsafe { libc::kill(server.pid() as libc::pid_t, libc::SIGSTOP) };
        assert_eq!(paused, 0, "SIGSTOP the test's redis-server");
        Frozen(server.pid())
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::kill(self.0 as libc::pid_t, libc::SIGCONT) };
    }
}
