//! Two processes on one Redis: what one caches or resets, the other sees;
//! a `#[once]` held by one refuses the other.
//!
//! The second process is this test binary run again on the `#[ignore]`d
//! `child` test, with its role and the server's URL in the environment.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use cachify::{Cachify, cached, once};

const ROLE: &str = "CACHIFY_TEST_CHILD_ROLE";
const URL: &str = "CACHIFY_TEST_CHILD_URL";

fn url() -> String {
    std::env::var(URL).unwrap_or_else(|_| support::shared_server().url())
}

fn client() -> &'static Cachify {
    static CLIENT: OnceLock<Cachify> = OnceLock::new();
    CLIENT.get_or_init(|| {
        Cachify::builder()
            .redis(url())
            .prefix("xp:")
            .build_blocking()
            .unwrap()
    })
}

static COMPUTED: AtomicU32 = AtomicU32::new(0);

/// Returns the id of the process that computed the value.
#[cached("computed-by-{id}", client = client())]
fn computed_by(id: u32) -> u32 {
    COMPUTED.fetch_add(1, Ordering::SeqCst);
    std::process::id()
}

static COUNTED: AtomicU32 = AtomicU32::new(0);

#[cached("counted-{id}", client = client())]
fn counted(id: u32) -> u32 {
    COUNTED.fetch_add(1, Ordering::SeqCst) + id
}

#[once("job-{id}", client = client(), return_on_locked = false)]
fn job(id: u32, hold: Duration) -> bool {
    println!("HOLDING job-{id}");
    std::thread::sleep(hold);
    true
}

#[test]
#[ignore = "run by the other tests as a second process"]
fn child() {
    let role = std::env::var(ROLE).expect("the child is started by another test");
    match role.as_str() {
        "compute" => println!("VALUE {}", computed_by(1)),
        "reset" => counted_reset(2).unwrap(),
        "hold" => assert!(
            job(3, Duration::from_millis(1500)),
            "the child takes the lock"
        ),
        other => panic!("unknown role {other}"),
    }
}

fn spawn_child(role: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE, role)
        .env(URL, url())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Runs a child to the end and returns its stdout lines.
fn run_child(role: &str) -> Vec<String> {
    let output = spawn_child(role).wait_with_output().unwrap();
    assert!(output.status.success(), "child {role} failed");
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_value_cached_by_one_process_is_a_hit_in_another() {
    let lines = run_child("compute");
    let child_pid: u32 = lines
        .iter()
        // The harness prints `test child ... ` on the same line first.
        .find_map(|line| line.split_once("VALUE ").map(|(_, value)| value))
        .expect("the child printed its value")
        .parse()
        .unwrap();
    assert_ne!(child_pid, std::process::id());
    assert_eq!(computed_by(1), child_pid, "served from the child's entry");
    assert_eq!(
        COMPUTED.load(Ordering::SeqCst),
        0,
        "this process did not run it"
    );
}

#[test]
fn a_reset_in_one_process_is_seen_by_another() {
    let first = counted(2);
    assert_eq!(counted(2), first, "cached");
    assert_eq!(COUNTED.load(Ordering::SeqCst), 1);
    run_child("reset");
    assert_eq!(counted(2), first + 1, "the entry was gone, so it ran again");
    assert_eq!(COUNTED.load(Ordering::SeqCst), 2);
}

#[test]
fn once_held_by_one_process_refuses_another() {
    let mut child = spawn_child("hold");
    let mut lines = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok);
    let holding = lines
        .by_ref()
        .take(50)
        .any(|line| line.contains("HOLDING job-3"));
    assert!(holding, "the child reported holding the lock");
    assert!(job_is_locked(3).unwrap());
    assert!(
        !job(3, Duration::ZERO),
        "refused while the other process holds it"
    );
    // Keep reading so the child never writes into a closed pipe.
    lines.for_each(drop);
    assert!(child.wait().unwrap().success());
    assert!(!job_is_locked(3).unwrap(), "the child released it");
    assert!(job(3, Duration::ZERO), "free again");
}
