//! Child processes for the multi-process tests: the test binary run again
//! on its `#[ignore]`d `child` test, a start barrier in Redis, and one
//! monotonic clock that every process on the machine shares.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// `CLOCK_MONOTONIC` in nanoseconds: one clock for all processes.
pub fn now_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    assert_eq!(status, 0, "clock_gettime(CLOCK_MONOTONIC) failed");
    u64::try_from(now.tv_sec).unwrap() * 1_000_000_000 + u64::try_from(now.tv_nsec).unwrap()
}

/// In a child: says "ready" (`INCR ready_key`), then waits, polling for at
/// most `limit`, until the parent sets `go_key`.
pub fn barrier(redis: &mut redis::Connection, ready_key: &str, go_key: &str, limit: Duration) {
    const POLL: Duration = Duration::from_millis(5);
    let _: i64 = redis::cmd("INCR")
        .arg(ready_key)
        .query(redis)
        .expect("child: INCR the ready count");
    let started = Instant::now();
    while started.elapsed() < limit {
        let go: bool = redis::cmd("EXISTS")
            .arg(go_key)
            .query(redis)
            .expect("child: read the go key");
        if go {
            return;
        }
        std::thread::sleep(POLL);
    }
    panic!("child: the parent never said go");
}

/// The children of one test; kills and reaps those still running when
/// dropped. Each child's output goes to a file, shown when a check fails.
pub struct Children {
    dir: PathBuf,
    envs: Vec<(String, String)>,
    children: Vec<Child>,
    outputs: Vec<PathBuf>,
}

impl Children {
    /// Children that write their output into `dir` and get `envs`.
    pub fn new(dir: &Path, envs: &[(&str, &str)]) -> Self {
        Children {
            dir: dir.to_owned(),
            envs: envs
                .iter()
                .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
                .collect(),
            children: Vec::new(),
            outputs: Vec::new(),
        }
    }

    /// Starts one more child, with `extra` environment on top of the
    /// common one; returns its pid.
    pub fn spawn(&mut self, extra: &[(&str, &str)]) -> u32 {
        let output_path = self.dir.join(format!("child-{}.out", self.children.len()));
        let output = File::create(&output_path).unwrap();
        let mut command = Command::new(std::env::current_exe().unwrap());
        command
            .args([
                "--exact",
                "child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .envs(
                self.envs
                    .iter()
                    .map(|(name, value)| (name.as_str(), value.as_str())),
            )
            .envs(extra.iter().copied())
            .stdin(Stdio::null())
            .stdout(output.try_clone().unwrap())
            .stderr(output);
        super::die_with_the_parent(&mut command);
        let child = command.spawn().expect("spawn a child");
        let pid = child.id();
        self.children.push(child);
        self.outputs.push(output_path);
        pid
    }

    pub fn pids(&self) -> HashSet<u32> {
        self.children.iter().map(Child::id).collect()
    }

    /// The tail of everything each child printed, for failure messages.
    pub fn outputs(&self) -> String {
        let mut all = String::new();
        for (child, path) in self.children.iter().zip(&self.outputs) {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let tail: String = text
                .chars()
                .rev()
                .take(3_000)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            all += &format!("--- child {} ---\n{tail}\n", child.id());
        }
        all
    }

    /// Panics (with the children's output) if a child has already exited.
    pub fn assert_all_running(&mut self, what: &str) {
        for child in &mut self.children {
            if let Some(status) = child.try_wait().unwrap() {
                let pid = child.id();
                panic!(
                    "child {pid} exited with {status} {what}\n{}",
                    self.outputs()
                );
            }
        }
    }

    /// Polls for at most `limit` until `condition` holds, failing early if a
    /// child exits.
    pub fn wait_until(&mut self, what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
        let started = Instant::now();
        while !condition() {
            self.assert_all_running(&format!("while waiting until {what}"));
            assert!(
                started.elapsed() < limit,
                "timed out waiting until {what}\n{}",
                self.outputs()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends SIGKILL to the child `pid` and reaps it.
    pub fn kill(&mut self, pid: u32) -> ExitStatus {
        let child = self
            .children
            .iter_mut()
            .find(|child| child.id() == pid)
            .unwrap();
        child.kill().unwrap();
        child.wait().unwrap()
    }

    /// Waits for at most `limit` for every child but `except` to exit, and
    /// asserts that each succeeded.
    pub fn wait_for_success(&mut self, except: Option<u32>, limit: Duration) {
        let started = Instant::now();
        while started.elapsed() < limit {
            let mut running = false;
            for child in &mut self.children {
                if Some(child.id()) == except {
                    continue;
                }
                match child.try_wait().unwrap() {
                    None => running = true,
                    Some(status) if !status.success() => {
                        let pid = child.id();
                        panic!("child {pid} failed with {status}\n{}", self.outputs());
                    }
                    Some(_) => {}
                }
            }
            if !running {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "the children did not finish within {limit:?}\n{}",
            self.outputs()
        );
    }

    pub fn kill_all(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.kill_all();
    }
}
