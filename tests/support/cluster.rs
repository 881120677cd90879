//! A real Redis Cluster for the integration tests: six `redis-server`
//! processes on loopback ports, three primaries with one replica each.
//!
//! Each node is a [`RedisServer`] of this module's parent, so it gets the
//! same care: its own temporary directory, no persistence, killed and reaped
//! on drop, and killed by the kernel when the test process ends however it
//! ends. Each node also gets its own `nodes.conf` in that directory and its
//! own cluster-bus port (`--cluster-port`): the default bus port, the client
//! port + 10000, may be taken, or above 65535 for a high ephemeral port.
//!
//! The node timeout is one second, so a killed primary is replaced by its
//! replica within a few seconds ([`RedisCluster::wait_for_failover`]).
//!
//! [`shared_cluster`] is one cluster for a whole test binary, for tests that
//! only need *a* cluster and use their own keys; a test that kills nodes
//! starts its own with [`RedisCluster::start`].
//!
//! [`RedisCluster::start_with_password`] starts one whose nodes all require
//! a password, from clients and from each other (a replica authenticates to
//! its primary with `--masterauth`); the support's own connections to it
//! authenticate too.

use std::fs::File;
use std::ops::RangeInclusive;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use super::{RedisServer, free_port, fresh_dir, redis_server_binary, spawn_for_the_process};

/// Nodes in the cluster: three primaries, each with one replica.
const NODES: usize = 6;
/// The number of hash slots in every Redis Cluster.
const SLOTS: u16 = 16384;
/// How many times to start the whole cluster again, on new ports, before
/// giving up (a probed-free port can be taken before a node binds it).
const START_ATTEMPTS: usize = 3;
/// How long `redis-cli --cluster create` may run.
const CREATE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the nodes may take, after `create`, to agree that every slot
/// is served and every replica has synced.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(30);
/// The pause between two looks at the cluster while waiting for it.
const POLL: Duration = Duration::from_millis(100);
/// Connect and read timeout for the support's own one-off node connections,
/// short so that polling a dead node fails fast.
const NODE_TIMEOUT: Duration = Duration::from_secs(1);

/// Six `redis-server` processes that form one Redis Cluster.
pub struct RedisCluster {
    /// Dropping a node kills and reaps it and removes its directory; a
    /// [`RedisCluster::kill`]ed node stays here, stopped, until then.
    nodes: Vec<RedisServer>,
    /// The `--requirepass` of every node, if any; the support's own node
    /// connections send it.
    password: Option<String>,
}

impl RedisCluster {
    /// Starts the six nodes, joins them into a cluster and waits until every
    /// node sees all slots served and every replica in sync. Panics, with
    /// what went wrong in each attempt, if that does not happen.
    pub fn start() -> Self {
        Self::start_as(None)
    }

    /// Like [`RedisCluster::start`], with every node started with
    /// `--requirepass password --masterauth password`, so that clients and
    /// replicas alike must authenticate.
    ///
    /// The password goes into `redis://:<password>@...` URLs as it is, so it
    /// must not need percent-encoding; that is checked here, rather than
    /// left to fail later as a puzzling authentication error.
    pub fn start_with_password(password: &str) -> Self {
        assert!(
            !password.is_empty()
                && password
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || b"-._~".contains(&byte)),
            "the test cluster's password must be non-empty and URL-safe \
             (ASCII letters, digits, `-._~`)"
        );
        Self::start_as(Some(password.to_owned()))
    }

    /// Starts a cluster, with or without a password, in a few attempts.
    fn start_as(password: Option<String>) -> Self {
        let binary = redis_server_binary();
        let mut failures = Vec::new();
        for attempt in 1..=START_ATTEMPTS {
            let mut cluster = RedisCluster {
                nodes: Vec::new(),
                password: password.clone(),
            };
            // On failure, dropping `cluster` kills the nodes started so far.
            match cluster.form(&binary) {
                Ok(()) => return cluster,
                Err(why) => failures.push(format!("attempt {attempt}: {why}")),
            }
        }
        panic!(
            "the Redis Cluster did not come up after {START_ATTEMPTS} attempts:\n{}",
            failures.join("\n")
        );
    }

    /// `redis://127.0.0.1:<port>` of all six nodes, killed ones included, as
    /// a client configured before the kill would have them. Never with a
    /// password, even if the cluster requires one (as
    /// [`RedisServer::url`]); see [`RedisCluster::seeds_with_password`].
    pub fn seeds(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|node| node_url(node.port, None))
            .collect()
    }

    /// `redis://:<password>@127.0.0.1:<port>` of all six nodes, killed ones
    /// included, for a cluster started with
    /// [`RedisCluster::start_with_password`]; panics for one without a
    /// password, where the plain [`RedisCluster::seeds`] are the ones to use.
    pub fn seeds_with_password(&self) -> Vec<String> {
        let password = self
            .password
            .as_deref()
            .expect("seeds_with_password on a cluster started without a password");
        self.nodes
            .iter()
            .map(|node| node_url(node.port, Some(password)))
            .collect()
    }

    /// The ports of the nodes that are primaries now, ascending, in the view
    /// of a live node: not failed, and serving at least one slot.
    pub fn primaries(&self) -> Vec<u16> {
        let (_, text) = self.cluster_nodes();
        let mut ports: Vec<u16> = parse_nodes(&text)
            .into_iter()
            .filter(|node| node.serving && !node.slots.is_empty())
            .map(|node| node.port)
            .collect();
        ports.sort_unstable();
        ports
    }

    /// The port of the primary serving `slot` now, in the view of a live node.
    pub fn port_serving_slot(&self, slot: u16) -> u16 {
        let (asked, text) = self.cluster_nodes();
        serving(&parse_nodes(&text), slot).unwrap_or_else(|| {
            panic!("no primary serves slot {slot} in the view of 127.0.0.1:{asked}:\n{text}")
        })
    }

    /// The hash slot of `key`, computed as Redis does: CRC16 (XMODEM) of the
    /// key's hash tag, modulo 16384. The hash tag is what lies between the
    /// first `{` and the first `}` after it, if that is not empty; otherwise
    /// the whole key.
    pub fn slot_of(key: &str) -> u16 {
        let key = key.as_bytes();
        let hashed = key
            .iter()
            .position(|&byte| byte == b'{')
            .and_then(|open| {
                let rest = &key[open + 1..];
                let close = rest.iter().position(|&byte| byte == b'}')?;
                (close > 0).then(|| &rest[..close])
            })
            .unwrap_or(key);
        crc16_xmodem(hashed) % SLOTS
    }

    /// Kills the node on `port` (SIGKILL) and reaps it; the cluster then
    /// sees it fail after the node timeout. Panics if there is no live node
    /// on `port`.
    pub fn kill(&mut self, port: u16) {
        let node = self
            .nodes
            .iter_mut()
            .find(|node| node.port == port && node.child.is_some())
            .unwrap_or_else(|| panic!("no live cluster node on port {port}"));
        node.stop();
    }

    /// Waits, for at most `timeout`, until every live node says that the
    /// cluster is ok and that one and the same live node serves `slot` (the
    /// replica promoted after a [`RedisCluster::kill`]); returns its port.
    pub fn wait_for_failover(&self, slot: u16, timeout: Duration) -> u16 {
        let started = Instant::now();
        let mut last_seen = String::new();
        while started.elapsed() < timeout {
            match self.agreed_server_of(slot) {
                Ok(port) => return port,
                Err(why) => last_seen = why,
            }
            thread::sleep(POLL);
        }
        panic!("no failover for slot {slot} within {timeout:?}; last seen: {last_seen}");
    }

    /// A synchronous cluster connection through the live nodes, for
    /// inspecting what the code under test wrote.
    pub fn connection(&self) -> redis::cluster::ClusterConnection {
        let seeds: Vec<String> = self
            .live_ports()
            .into_iter()
            .map(|port| node_url(port, self.password.as_deref()))
            .collect();
        redis::cluster::ClusterClient::builder(seeds)
            .connection_timeout(Duration::from_secs(5))
            .response_timeout(Duration::from_secs(5))
            .build()
            .expect("loopback seed URLs parse")
            .get_connection()
            .expect("connect to the test Redis Cluster")
    }

    /// Empties every primary (and so, through replication, every replica).
    pub fn flushall(&self) {
        for port in self.primaries() {
            self.ask(port, &["FLUSHALL"])
                .unwrap_or_else(|error| panic!("FLUSHALL on 127.0.0.1:{port}: {error}"));
        }
    }

    /// Starts the nodes, runs `redis-cli --cluster create` and waits for the
    /// cluster to converge.
    fn form(&mut self, binary: &Path) -> Result<(), String> {
        for _ in 0..NODES {
            let port = free_port();
            let dir = fresh_dir(port);
            let mut extra_args = vec![
                "--cluster-enabled".to_owned(),
                "yes".to_owned(),
                "--cluster-node-timeout".to_owned(),
                "1000".to_owned(),
                "--cluster-config-file".to_owned(),
                dir.join("nodes.conf").display().to_string(),
                "--cluster-port".to_owned(),
                free_port().to_string(),
                // A replica's first sync would otherwise wait 5 s for more
                // replicas to share the transfer; each primary has only one.
                "--repl-diskless-sync-delay".to_owned(),
                "0".to_owned(),
            ];
            if let Some(password) = &self.password {
                // `--masterauth`: a replica must authenticate to its primary
                // as well, or it never syncs.
                extra_args.extend(
                    [
                        "--requirepass",
                        password.as_str(),
                        "--masterauth",
                        password.as_str(),
                    ]
                    .map(str::to_owned),
                );
            }
            let mut node = RedisServer {
                child: None,
                port,
                dir,
                extra_args,
                password: self.password.clone(),
            };
            let spawned = node.spawn(binary);
            self.nodes.push(node);
            spawned.map_err(|why| format!("node on port {port}: {why}"))?;
        }
        self.create()?;
        let started = Instant::now();
        let mut last_seen = String::new();
        while started.elapsed() < CONVERGE_TIMEOUT {
            match self.converged() {
                Ok(()) => return Ok(()),
                Err(why) => last_seen = why,
            }
            thread::sleep(POLL);
        }
        Err(format!(
            "not converged within {CONVERGE_TIMEOUT:?}; last seen: {last_seen}"
        ))
    }

    /// Runs `redis-cli --cluster create` on all nodes, for at most
    /// [`CREATE_TIMEOUT`]. Its output goes to a file, not a pipe, so it cannot
    /// block on a full pipe while we wait; the file is in the first node's
    /// directory and is quoted on failure.
    fn create(&self) -> Result<(), String> {
        let log_path = self.nodes[0].dir.join("cluster-create.log");
        let log = File::create(&log_path)
            .map_err(|error| format!("cannot create {}: {error}", log_path.display()))?;
        let stderr = log
            .try_clone()
            .map_err(|error| format!("cannot reopen {}: {error}", log_path.display()))?;
        let mut command = Command::new("redis-cli");
        command
            .args(["--cluster", "create"])
            .args(
                self.nodes
                    .iter()
                    .map(|node| format!("127.0.0.1:{}", node.port)),
            )
            .args(["--cluster-replicas", "1", "--cluster-yes"]);
        if let Some(password) = &self.password {
            // `-a` is how redis-cli 7 takes the password, for `--cluster`
            // too; `--no-auth-warning` keeps its warning about a password on
            // the command line out of the log quoted on failure.
            command.args(["-a", password.as_str(), "--no-auth-warning"]);
        }
        command.stdin(Stdio::null()).stdout(log).stderr(stderr);
        let mut child = spawn_for_the_process(command).unwrap_or_else(|error| {
            panic!(
                "these tests need `redis-cli` on PATH ({error}). It comes with redis-server: \
                 `apt-get install redis-server` on Debian/Ubuntu, `brew install redis` on macOS."
            )
        });
        let started = Instant::now();
        let outcome = loop {
            match child.try_wait() {
                Ok(Some(status)) if status.success() => break Ok(()),
                Ok(Some(status)) => break Err(format!("exited with {status}")),
                Ok(None) if started.elapsed() < CREATE_TIMEOUT => thread::sleep(POLL),
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break Err(format!("still running after {CREATE_TIMEOUT:?}; killed"));
                }
                Err(error) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break Err(format!("cannot wait for it: {error}"));
                }
            }
        };
        outcome.map_err(|why| {
            let output = std::fs::read_to_string(&log_path).unwrap_or_default();
            format!("redis-cli --cluster create {why}; its output:\n{output}")
        })
    }

    /// `Ok` once every node says the cluster is ok, knows all six nodes and
    /// sees all slots served, and every primary has its replica in sync;
    /// otherwise what is not there yet.
    fn converged(&self) -> Result<(), String> {
        for node in &self.nodes {
            let port = node.port;
            let info = self
                .ask(port, &["CLUSTER", "INFO"])
                .map_err(|error| format!("CLUSTER INFO on {port}: {error}"))?;
            let expected = [
                "cluster_state:ok".to_owned(),
                format!("cluster_slots_assigned:{SLOTS}"),
                format!("cluster_slots_ok:{SLOTS}"),
                format!("cluster_known_nodes:{NODES}"),
            ];
            if !expected.iter().all(|line| has_line(&info, line)) {
                return Err(format!("CLUSTER INFO on {port}:\n{info}"));
            }
            let replication = self
                .ask(port, &["INFO", "replication"])
                .map_err(|error| format!("INFO replication on {port}: {error}"))?;
            let synced = if has_line(&replication, "role:master") {
                has_line(&replication, "connected_slaves:1") && replication.contains("state=online")
            } else {
                has_line(&replication, "master_link_status:up")
            };
            if !synced {
                return Err(format!("INFO replication on {port}:\n{replication}"));
            }
        }
        Ok(())
    }

    /// The live node that every live node says serves `slot`, if they all
    /// agree and all say the cluster is ok; otherwise what they say.
    fn agreed_server_of(&self, slot: u16) -> Result<u16, String> {
        let live = self.live_ports();
        let mut agreed = None;
        for &port in &live {
            let info = self
                .ask(port, &["CLUSTER", "INFO"])
                .map_err(|error| format!("CLUSTER INFO on {port}: {error}"))?;
            if !has_line(&info, "cluster_state:ok") {
                return Err(format!("CLUSTER INFO on {port}:\n{info}"));
            }
            let nodes = self
                .ask(port, &["CLUSTER", "NODES"])
                .map_err(|error| format!("CLUSTER NODES on {port}: {error}"))?;
            let server = serving(&parse_nodes(&nodes), slot)
                .filter(|server| live.contains(server) && agreed.is_none_or(|a| a == *server))
                .ok_or_else(|| format!("CLUSTER NODES on {port}:\n{nodes}"))?;
            agreed = Some(server);
        }
        agreed.ok_or_else(|| "no live node".to_owned())
    }

    /// `CLUSTER NODES` from a live node, with that node's port (for messages).
    fn cluster_nodes(&self) -> (u16, String) {
        let asked = self.live_ports()[0];
        let text = self
            .ask(asked, &["CLUSTER", "NODES"])
            .unwrap_or_else(|error| panic!("CLUSTER NODES on 127.0.0.1:{asked}: {error}"));
        (asked, text)
    }

    /// The ports of the nodes not killed; panics if there is none.
    fn live_ports(&self) -> Vec<u16> {
        let live: Vec<u16> = self
            .nodes
            .iter()
            .filter(|node| node.child.is_some())
            .map(|node| node.port)
            .collect();
        assert!(
            !live.is_empty(),
            "every node of the test cluster was killed"
        );
        live
    }

    /// Runs one command on the node at `port` over a new connection,
    /// authenticated if the cluster has a password, and returns its text
    /// reply. Errors (a node still starting, or one that was killed) are
    /// for the caller's bounded poll to retry or to report.
    fn ask(&self, port: u16, command: &[&str]) -> redis::RedisResult<String> {
        let client = redis::Client::open(node_url(port, self.password.as_deref()))?;
        let mut connection = client.get_connection_with_timeout(NODE_TIMEOUT)?;
        connection.set_read_timeout(Some(NODE_TIMEOUT))?;
        connection.set_write_timeout(Some(NODE_TIMEOUT))?;
        let mut cmd = redis::cmd(command[0]);
        for arg in &command[1..] {
            cmd.arg(*arg);
        }
        cmd.query(&mut connection)
    }
}

/// One cluster for the whole test binary, started on first use. Like
/// [`super::shared_server`], it lives until the process ends, and its nodes
/// are then killed by the kernel.
pub fn shared_cluster() -> &'static RedisCluster {
    static SHARED: OnceLock<RedisCluster> = OnceLock::new();
    SHARED.get_or_init(RedisCluster::start)
}

/// One node of a `CLUSTER NODES` reply, as far as these tests need it.
struct NodeLine {
    port: u16,
    /// A primary not flagged as failing (`fail` or `fail?`).
    serving: bool,
    slots: Vec<RangeInclusive<u16>>,
}

/// Parses a `CLUSTER NODES` reply: per line, `<id> <ip:port@cport[,hostname]>
/// <flags> <primary> <ping-sent> <pong-recv> <epoch> <link> <slot>...`, where
/// a slot is `n` or `n-m`, or `[n->-id]`/`[n-<-id]` for one in migration
/// (which these tests do not do, and which is skipped).
fn parse_nodes(text: &str) -> Vec<NodeLine> {
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let port = fields
                .get(1)
                .and_then(|address| address.split('@').next())
                .and_then(|address| address.rsplit(':').next())
                .and_then(|port| port.parse().ok())
                .unwrap_or_else(|| panic!("no port in the CLUSTER NODES line {line:?}"));
            let flags: Vec<&str> = fields.get(2).map_or(Vec::new(), |f| f.split(',').collect());
            let serving = flags.contains(&"master")
                && !flags.iter().any(|flag| *flag == "fail" || *flag == "fail?");
            let slots = fields
                .iter()
                .skip(8)
                .filter(|slot| !slot.starts_with('['))
                .map(|slot| {
                    let (first, last) = slot.split_once('-').unwrap_or((slot, slot));
                    let parse = |n: &str| {
                        n.parse::<u16>().unwrap_or_else(|_| {
                            panic!("bad slot {slot:?} in the CLUSTER NODES line {line:?}")
                        })
                    };
                    parse(first)..=parse(last)
                })
                .collect();
            NodeLine {
                port,
                serving,
                slots,
            }
        })
        .collect()
}

/// The port of the serving primary that owns `slot` in `nodes`.
fn serving(nodes: &[NodeLine], slot: u16) -> Option<u16> {
    nodes
        .iter()
        .find(|node| node.serving && node.slots.iter().any(|range| range.contains(&slot)))
        .map(|node| node.port)
}

/// CRC16 with the XMODEM parameters (polynomial 0x1021, initial value 0,
/// no reflection), the checksum that Redis Cluster hashes keys with.
fn crc16_xmodem(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 == 0 {
                crc << 1
            } else {
                (crc << 1) ^ 0x1021
            };
        }
    }
    crc
}

/// Whether an `INFO`-style reply has exactly `line` as one of its lines
/// (`connected_slaves:1` must not match `connected_slaves:10`).
fn has_line(reply: &str, line: &str) -> bool {
    reply.lines().any(|candidate| candidate.trim_end() == line)
}

/// A node's URL, with `password` if given, and without a database: a
/// cluster has only database 0.
fn node_url(port: u16, password: Option<&str>) -> String {
    match password {
        Some(password) => format!("redis://:{password}@127.0.0.1:{port}"),
        None => format!("redis://127.0.0.1:{port}"),
    }
}
