//! Building a `Cachify` client: defaults, Redis connection checks, errors,
//! and that passwords never show in `Display` or `Debug`.

mod support;

use std::net::{Ipv4Addr, TcpListener};
use std::time::{Duration, Instant};

use cachify::{Cachify, CachifyBuilder, Error};
use support::{Deadline, RedisServer};

/// How long a failing connection may take to report its error. The client's
/// connect timeout is 2 s by default; this leaves a wide margin.
const FAIL_FAST: Duration = Duration::from_secs(10);

/// Asserts that neither the `Display` nor the `Debug` of `error` holds any
/// of `secrets`.
fn assert_hides(error: &Error, secrets: &[&str]) {
    let shown = [
        error.to_string(),
        format!("{error:?}"),
        format!("{error:#?}"),
    ];
    for text in &shown {
        for secret in secrets {
            assert!(
                !text.contains(secret),
                "`{secret}` leaked into an error: {text}"
            );
        }
    }
}

/// Proves a Redis client talks to `server`: a lock taken through it is a
/// key on that server.
fn assert_uses_server(client: &Cachify, server: &RedisServer, name: &str) {
    let guard = client
        .lock(name)
        .acquire_blocking()
        .expect("take a lock on the test server");
    let mut raw = server.connection();
    let exists: bool = redis::cmd("EXISTS")
        .arg(guard.key())
        .query(&mut raw)
        .unwrap();
    assert!(exists, "the lock {} is not on the test server", guard.key());
    guard.release_blocking().unwrap();
    let exists: bool = redis::cmd("EXISTS")
        .arg(format!("{}lock:{name}", client.prefix()))
        .query(&mut raw)
        .unwrap();
    assert!(
        !exists,
        "release did not remove the lock from the test server"
    );
}

fn assert_documented_defaults(client: &Cachify) {
    assert_eq!(client.prefix(), "cachify:");
    assert_eq!(client.lock_ttl(), Duration::from_secs(30));
    assert_eq!(client.default_ttl(), None);
}

// ---------------------------------------------------------------- memory

#[test]
fn memory_build_blocking_has_the_documented_defaults() {
    let client = Cachify::builder().memory().build_blocking().unwrap();
    assert_documented_defaults(&client);
    assert!(format!("{client:?}").contains("memory"), "{client:?}");
    // The default builder is the memory one too.
    assert_documented_defaults(&Cachify::builder().build_blocking().unwrap());
}

#[tokio::test]
async fn memory_build_async_has_the_documented_defaults() {
    let client = Cachify::builder().memory().build().await.unwrap();
    assert_documented_defaults(&client);
    assert!(format!("{client:?}").contains("memory"), "{client:?}");
}

#[test]
fn builder_settings_are_kept() {
    let client = Cachify::builder()
        .memory()
        .prefix("app:")
        .default_ttl(Duration::from_secs(60))
        .lock_ttl(Duration::from_secs(5))
        .build_blocking()
        .unwrap();
    assert_eq!(client.prefix(), "app:");
    assert_eq!(client.default_ttl(), Some(Duration::from_secs(60)));
    assert_eq!(client.lock_ttl(), Duration::from_secs(5));
    let guard = client.lock("job").acquire_blocking().unwrap();
    assert_eq!(guard.key(), "app:lock:job");
    guard.release_blocking().unwrap();

    // `.memory()` after `.redis()` means memory: nothing is connected.
    let client = Cachify::builder()
        .redis("redis://127.0.0.1:1/0")
        .memory()
        .build_blocking()
        .unwrap();
    assert!(format!("{client:?}").contains("memory"), "{client:?}");
}

#[test]
fn clones_share_one_backend() {
    let client = Cachify::builder().memory().build_blocking().unwrap();
    let clone = client.clone();
    let guard = client.lock("shared").acquire_blocking().unwrap();
    assert!(matches!(
        clone.lock("shared").acquire_blocking(),
        Err(Error::Locked { .. })
    ));
    guard.release_blocking().unwrap();
    clone
        .lock("shared")
        .acquire_blocking()
        .unwrap()
        .release_blocking()
        .unwrap();
}

// ---------------------------------------------------------------- redis: success

#[tokio::test]
async fn redis_build_async_connects() {
    let server = RedisServer::start();
    let client = Cachify::builder()
        .redis(server.url())
        .build()
        .await
        .unwrap();
    assert_documented_defaults(&client);
    let shown = format!("{client:?}");
    assert!(
        shown.contains("redis") && shown.contains(&server.port().to_string()),
        "{shown}"
    );
    assert_uses_server(&client, &server, "async-build");
}

#[test]
fn redis_build_blocking_without_a_runtime() {
    assert!(
        tokio::runtime::Handle::try_current().is_err(),
        "this test must run outside any runtime"
    );
    let server = RedisServer::start();
    let client = Cachify::builder()
        .redis(server.url())
        .build_blocking()
        .unwrap();
    assert_documented_defaults(&client);
    assert_uses_server(&client, &server, "blocking-no-runtime");
}

#[tokio::test(flavor = "current_thread")]
async fn redis_build_blocking_inside_a_current_thread_runtime() {
    let _deadline = Deadline::new(
        Duration::from_secs(60),
        "build_blocking in a current-thread runtime",
    );
    let server = RedisServer::start();
    let client = Cachify::builder()
        .redis(server.url())
        .build_blocking()
        .unwrap();
    assert_uses_server(&client, &server, "blocking-current-thread");
    // The runtime is still usable afterwards, and so is the async API.
    let guard = client.lock("after").acquire().await.unwrap();
    guard.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_build_blocking_inside_a_multi_thread_runtime() {
    let _deadline = Deadline::new(
        Duration::from_secs(60),
        "build_blocking in a multi-thread runtime",
    );
    let server = RedisServer::start();
    let client = Cachify::builder()
        .redis(server.url())
        .build_blocking()
        .unwrap();
    assert_uses_server(&client, &server, "blocking-multi-thread");
    // From a worker thread as well.
    let url = server.url();
    let built = tokio::spawn(async move { Cachify::builder().redis(url).build_blocking() })
        .await
        .unwrap();
    assert_uses_server(&built.unwrap(), &server, "blocking-worker");
}

#[tokio::test]
async fn redis_database_number_in_the_url_is_used() {
    let server = RedisServer::start();
    let client = Cachify::builder()
        .redis(format!("redis://127.0.0.1:{}/3", server.port()))
        .build()
        .await
        .unwrap();
    let guard = client.lock("in-db-3").acquire().await.unwrap();
    let in_db_3: bool = redis::cmd("EXISTS")
        .arg(guard.key())
        .query(&mut server.connection_to_db(3))
        .unwrap();
    let in_db_0: bool = redis::cmd("EXISTS")
        .arg(guard.key())
        .query(&mut server.connection())
        .unwrap();
    assert!(
        in_db_3 && !in_db_0,
        "the lock should be in db 3 only (db 3: {in_db_3}, db 0: {in_db_0})"
    );
    guard.release().await.unwrap();
}

#[tokio::test]
async fn redis_lock_ttl_is_the_default_lease() {
    let server = RedisServer::start();
    let client = Cachify::builder()
        .redis(server.url())
        .lock_ttl(Duration::from_secs(7))
        .build()
        .await
        .unwrap();
    let guard = client.lock("default-lease").acquire().await.unwrap();
    let pttl: i64 = redis::cmd("PTTL")
        .arg(guard.key())
        .query(&mut server.connection())
        .unwrap();
    assert!(
        pttl > 0 && pttl <= 7_000,
        "PTTL {pttl} ms is not the 7 s lock_ttl"
    );
    guard.release().await.unwrap();
}

// ---------------------------------------------------------------- redis: errors

#[tokio::test]
async fn malformed_urls_are_config_errors() {
    let urls = [
        "not a url",
        "",
        "redis://",
        "redis://:hunter2@",
        "http://127.0.0.1:1/0",
        "redis://127.0.0.1:notaport/0",
        "redis://127.0.0.1:1/notadb",
        "redis://127.0.0.1:1/0?protocol=resp9",
        "redis://0.0.0.0:1/0",
    ];
    for url in urls {
        let started = Instant::now();
        let async_result = Cachify::builder().redis(url).build().await;
        let blocking_result = Cachify::builder().redis(url).build_blocking();
        for result in [async_result, blocking_result] {
            match result {
                Err(error @ Error::Config(_)) => assert_hides(&error, &["hunter2"]),
                other => panic!("{url:?}: expected Err(Error::Config(_)), got {other:?}"),
            }
        }
        assert!(
            started.elapsed() < FAIL_FAST,
            "{url:?}: a malformed URL took {:?} to fail",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn an_unreachable_server_is_a_backend_error_within_seconds() {
    let url = format!("redis://127.0.0.1:{}/0", support::free_port());

    let started = Instant::now();
    let result = Cachify::builder().redis(&url).build().await;
    assert!(
        matches!(result, Err(Error::Backend(_))),
        "build(): {result:?}"
    );
    assert!(
        started.elapsed() < FAIL_FAST,
        "build() took {:?} to fail",
        started.elapsed()
    );

    let started = Instant::now();
    let result = Cachify::builder().redis(&url).build_blocking();
    assert!(
        matches!(result, Err(Error::Backend(_))),
        "build_blocking(): {result:?}"
    );
    assert!(
        started.elapsed() < FAIL_FAST,
        "build_blocking() took {:?} to fail",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_server_that_never_answers_is_a_backend_error_within_seconds() {
    // The kernel completes the TCP handshake (backlog) but nobody ever
    // reads or replies: only the client's timeouts can end this.
    let silent = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let url = format!(
        "redis://127.0.0.1:{}/0",
        silent.local_addr().unwrap().port()
    );

    let started = Instant::now();
    let result = Cachify::builder().redis(&url).build().await;
    assert!(
        matches!(result, Err(Error::Backend(_))),
        "build(): {result:?}"
    );
    assert!(
        started.elapsed() < FAIL_FAST,
        "build() took {:?} to fail",
        started.elapsed()
    );

    let started = Instant::now();
    let result = Cachify::builder()
        .redis(&url)
        .connect_timeout(Duration::from_millis(300))
        .build_blocking();
    assert!(
        matches!(result, Err(Error::Backend(_))),
        "build_blocking(): {result:?}"
    );
    assert!(
        started.elapsed() < FAIL_FAST,
        "build_blocking() took {:?} to fail",
        started.elapsed()
    );
    drop(silent);
}

/// `BackendError::is_timeout` is "true when the failure was a timeout",
/// for a timed-out connect too. (Regression: `connect` once wrapped
/// connection failures in a new message and dropped the `RedisError`
/// source, so this reported `false`.)
#[tokio::test]
async fn a_connect_timeout_is_reported_as_a_timeout() {
    let silent = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let url = format!(
        "redis://127.0.0.1:{}/0",
        silent.local_addr().unwrap().port()
    );
    let result = Cachify::builder()
        .redis(&url)
        .connect_timeout(Duration::from_millis(300))
        .build()
        .await;
    match result {
        Err(Error::Backend(error)) => {
            assert!(
                error.to_string().contains("timed out"),
                "not a timeout at all: {error}"
            );
            assert!(
                error.is_timeout(),
                "a connect timeout reports is_timeout() == false: {error:?}"
            );
        }
        other => panic!("expected Err(Error::Backend(_)), got {other:?}"),
    }
}

#[tokio::test]
async fn a_wrong_password_is_an_error_that_shows_no_password() {
    let server = RedisServer::start_with(&["--requirepass", "s3cret"]);
    let port = server.port();
    let urls = [
        format!("redis://:hunter2-wrong@127.0.0.1:{port}/0"),
        format!("redis://default:hunter2-wrong@127.0.0.1:{port}/0"),
        format!("redis://127.0.0.1:{port}/0"), // no password at all
    ];
    for url in &urls {
        let async_result = Cachify::builder().redis(url).build().await;
        let blocking_result = Cachify::builder().redis(url).build_blocking();
        for result in [async_result, blocking_result] {
            match result {
                Err(error @ Error::Backend(_)) => {
                    assert_hides(&error, &["hunter2-wrong", "s3cret"])
                }
                other => panic!("{url}: expected Err(Error::Backend(_)), got {other:?}"),
            }
        }
    }
}

#[tokio::test]
async fn the_right_password_connects_and_never_shows() {
    let server = RedisServer::start_with(&["--requirepass", "s3cret"]);
    for url in [
        format!("redis://:s3cret@127.0.0.1:{}/0", server.port()),
        format!("redis://default:s3cret@127.0.0.1:{}/0", server.port()),
    ] {
        let builder: CachifyBuilder = Cachify::builder().redis(&url);
        for shown in [format!("{builder:?}"), format!("{builder:#?}")] {
            assert!(
                !shown.contains("s3cret"),
                "builder Debug shows the password: {shown}"
            );
            assert!(
                shown.contains("***"),
                "builder Debug should show where the password was: {shown}"
            );
        }
        let client = builder.clone().build().await.unwrap();
        for shown in [format!("{client:?}"), format!("{client:#?}")] {
            assert!(
                !shown.contains("s3cret"),
                "client Debug shows the password: {shown}"
            );
        }
        assert_uses_server(&client, &server, "authenticated");
        let client = builder.build_blocking().unwrap();
        assert!(!format!("{client:?}").contains("s3cret"));
    }
}

#[tokio::test]
async fn a_database_number_out_of_range_is_an_error() {
    // A default server has 16 databases: 0..=15.
    let server = RedisServer::start();
    let url = format!("redis://127.0.0.1:{}/99", server.port());
    let result = Cachify::builder().redis(&url).build().await;
    assert!(
        matches!(result, Err(Error::Backend(_))),
        "build(): {result:?}"
    );
    let result = Cachify::builder().redis(&url).build_blocking();
    assert!(
        matches!(result, Err(Error::Backend(_))),
        "build_blocking(): {result:?}"
    );
    // While db 15 exists.
    let url = format!("redis://127.0.0.1:{}/15", server.port());
    Cachify::builder().redis(&url).build().await.unwrap();
}

#[tokio::test]
async fn zero_durations_and_capacity_are_config_errors() {
    // A Redis URL nothing listens on: were the settings not checked before
    // connecting, this would be a Backend error instead.
    let unreachable = format!("redis://127.0.0.1:{}/0", support::free_port());
    type Configure = fn(CachifyBuilder) -> CachifyBuilder;
    let bad: Vec<(&str, Configure)> = vec![
        ("default_ttl(0)", |b| b.default_ttl(Duration::ZERO)),
        ("lock_ttl(0)", |b| b.lock_ttl(Duration::ZERO)),
        ("default_ttl(999µs)", |b| {
            b.default_ttl(Duration::from_micros(999))
        }),
        ("lock_ttl(999µs)", |b| {
            b.lock_ttl(Duration::from_micros(999))
        }),
        ("connect_timeout(0)", |b| b.connect_timeout(Duration::ZERO)),
        ("command_timeout(0)", |b| b.command_timeout(Duration::ZERO)),
        ("max_entries(0)", |b| b.max_entries(0)),
    ];
    for (what, configure) in bad {
        for base in [
            Cachify::builder().memory(),
            Cachify::builder().redis(&unreachable),
        ] {
            let blocking = configure(base.clone()).build_blocking();
            assert!(
                matches!(blocking, Err(Error::Config(_))),
                "{what}, build_blocking: {blocking:?}"
            );
            let built = configure(base).build().await;
            assert!(
                matches!(built, Err(Error::Config(_))),
                "{what}, build: {built:?}"
            );
        }
    }
    // The smallest accepted values.
    Cachify::builder()
        .default_ttl(Duration::from_millis(1))
        .lock_ttl(Duration::from_millis(1))
        .max_entries(1)
        .build_blocking()
        .unwrap();
}

#[tokio::test]
async fn rediss_without_the_tls_feature_is_a_clear_error() {
    // A plain server: with TLS compiled in, the handshake fails (Backend);
    // without it, the URL is refused up front (Config). Never a panic.
    let server = RedisServer::start();
    let url = format!("rediss://127.0.0.1:{}/0", server.port());
    let started = Instant::now();
    let results = [
        Cachify::builder().redis(&url).build().await,
        Cachify::builder().redis(&url).build_blocking(),
    ];
    for result in results {
        match result {
            Err(Error::Config(message)) => {
                assert!(
                    message.to_lowercase().contains("tls"),
                    "the error should say TLS is missing: {message}"
                )
            }
            Err(Error::Backend(_)) => {}
            other => panic!("expected a Config or Backend error, got {other:?}"),
        }
    }
    assert!(
        started.elapsed() < FAIL_FAST,
        "took {:?} to fail",
        started.elapsed()
    );
}

/// redis-rs takes the password of a Unix-socket URL from its query
/// (`redis+unix:///path?pass=...`); it must be hidden like any other.
/// (Regression: `redact` once only hid a password written before an `@`,
/// so `Debug` of the builder and the client, and the error of a failed
/// connection, printed it.)
#[tokio::test]
async fn a_unix_socket_password_never_shows() {
    let socket_dir = std::env::temp_dir().join(format!("cachify-test-sock-{}", std::process::id()));
    std::fs::create_dir_all(&socket_dir).unwrap();
    let socket = socket_dir.join("redis.sock");
    let socket = socket.to_str().unwrap();
    let server = RedisServer::start_with(&["--unixsocket", socket, "--requirepass", "s3cret"]);

    // The password does reach the server this way: the client connects.
    let url = format!("redis+unix://{socket}?pass=s3cret");
    let builder = Cachify::builder().redis(&url);
    let client = builder
        .clone()
        .build()
        .await
        .expect("connect over the Unix socket with its password");
    assert_uses_server(&client, &server, "over-unix-socket");

    let wrong = Cachify::builder()
        .redis(format!("redis+unix://{socket}?pass=hunter2-wrong"))
        .build()
        .await;
    let _ = std::fs::remove_dir_all(&socket_dir);
    let wrong = match wrong {
        Err(error) => error,
        Ok(client) => panic!("a wrong password connected: {client:?}"),
    };
    let leaks: Vec<String> = [
        ("builder Debug", format!("{builder:?}")),
        ("client Debug", format!("{client:?}")),
        ("error Display", wrong.to_string()),
        ("error Debug", format!("{wrong:?}")),
    ]
    .into_iter()
    .filter(|(_, shown)| shown.contains("s3cret") || shown.contains("hunter2-wrong"))
    .map(|(what, shown)| format!("{what}: {shown}"))
    .collect();
    assert!(
        leaks.is_empty(),
        "a Unix-socket password shows in:\n{}",
        leaks.join("\n")
    );
}

/// A near cache needs Redis and room for at least one copy: anything else
/// is a configuration error from `build()`, before any connection.
#[test]
fn near_cache_misconfigurations_are_config_errors() {
    let on_memory = Cachify::builder().memory().near_cache(10).build_blocking();
    match on_memory {
        Err(Error::Config(message)) => assert!(
            message.contains(".redis("),
            "the error should name `.redis(..)`: {message}"
        ),
        other => panic!("expected Err(Error::Config(_)), got {other:?}"),
    }
    // The port is never connected to: the settings are checked first.
    let empty = Cachify::builder()
        .redis("redis://127.0.0.1:1/0")
        .near_cache(0)
        .build_blocking();
    match empty {
        Err(Error::Config(message)) => assert!(
            message.contains("near_cache"),
            "the error should name near_cache: {message}"
        ),
        other => panic!("expected Err(Error::Config(_)), got {other:?}"),
    }
}
