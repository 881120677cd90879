//! The Redis protocol, shared by the stores that speak it (one server, a
//! cluster): the commands and Lua scripts, and one implementation of
//! [`ByteStore`], [`LockStore`], [`TagStore`] and [`PoolStore`] over a [`Link`], which is
//! all such a store has to provide.

use std::future::Future;
use std::sync::LazyLock;
use std::time::Duration;

use redis::{Cmd, ConnectionInfo, FromRedisValue, Script, ScriptInvocation};

use super::{
    ByteStore, Fence, Grant, Io, LockStore, PoolStore, StoreFuture, TagStore, Watch, millis,
};
use crate::error::{BackendError, Error};
use crate::keyspace::{KeyMatch, Line, TagKeys};

/// Takes the lock if it is free and nobody waits before the caller and, in
/// the same atomic step, draws the next fencing token: one above the last
/// and never behind the server's clock in microseconds, so a counter that
/// expired while idle restarts above every token it handed out. The
/// counter expires after `ARGV[4]` milliseconds without a grant. Lua numbers
/// are doubles, exact up to 2^53 (microseconds until the year 2255); `%d`
/// keeps every digit when the counter is written back.
///
/// The line (`KEYS[2]`, tokens by arrival; `KEYS[3]`, tokens by the deadline
/// of their place) is purged of lapsed places first, by the server's
/// clock. A free lock goes to the line's head, or to anyone when the line
/// is empty; a refused caller with `ARGV[3]` > 0 joins the line, or keeps its
/// place, for that many milliseconds (the sets then live at least that
/// long; never shorter, since other clients may keep places longer).
/// `replicate_commands` lets Redis before 5 accept writes after `TIME`
/// (later versions always replicate effects). The reply is `{1, token}`
/// when taken (token 0 without a counter), `{0, pttl}` when refused: the
/// lock's time to live in milliseconds, or -2 when it is free but promised
/// to an earlier waiter.
static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "redis.replicate_commands() \
         local now = redis.call('TIME') \
         local clock = tonumber(now[1]) * 1000000 + tonumber(now[2]) \
         local ms = math.floor(clock / 1000) \
         local lapsed = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ms) \
         for i = 1, #lapsed do \
             redis.call('ZREM', KEYS[2], lapsed[i]) \
             redis.call('ZREM', KEYS[3], lapsed[i]) \
         end \
         local keep = tonumber(ARGV[3]) \
         local head = redis.call('ZRANGE', KEYS[2], 0, 0)[1] \
         if redis.call('EXISTS', KEYS[1]) == 1 or (head and head ~= ARGV[1]) then \
             if keep > 0 then \
                 redis.call('ZADD', KEYS[2], 'NX', string.format('%d', clock), ARGV[1]) \
                 redis.call('ZADD', KEYS[3], ms + keep, ARGV[1]) \
                 for k = 2, 3 do \
                     if redis.call('PTTL', KEYS[k]) < keep then \
                         redis.call('PEXPIRE', KEYS[k], keep) \
                     end \
                 end \
             end \
             return {0, redis.call('PTTL', KEYS[1])} \
         end \
         redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) \
         if head then \
             redis.call('ZREM', KEYS[2], ARGV[1]) \
             redis.call('ZREM', KEYS[3], ARGV[1]) \
         end \
         if #KEYS < 4 then \
             return {1, 0} \
         end \
         local last = redis.call('GET', KEYS[4]) \
         last = last and tonumber(last) or 0 \
         local token = math.max(last + 1, clock) \
         redis.call('SET', KEYS[4], string.format('%d', token), 'PX', ARGV[4]) \
         return {1, token}",
    )
});

/// Reads an `ACQUIRE` or `POOL_ACQUIRE` reply: `{1, value}` taken,
/// `{0, ms}` refused with the milliseconds left on the lease in the way
/// (negative: none).
fn grant(reply: Vec<i64>) -> Result<Grant<u64>, Error> {
    match reply[..] {
        [1, taken] => Ok(Grant::Taken(u64::try_from(taken).unwrap_or_default())),
        [0, left] => Ok(Grant::Refused {
            free_in: u64::try_from(left).ok().map(Duration::from_millis),
        }),
        _ => Err(Error::Backend(BackendError::new(format!(
            "unexpected reply to a lock or pool attempt: {reply:?}"
        )))),
    }
}

/// Deletes the lock only if it still holds our token, and announces the
/// release on the lock's channel (`ARGV[3]`) with `ARGV[2]`, `PUBLISH` or
/// `SPUBLISH`.
static UNLOCK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then \
             redis.call('DEL', KEYS[1]) \
             redis.call(ARGV[2], ARGV[3], '') \
             return 1 \
         else \
             return 0 \
         end",
    )
});

/// Deletes the lock whoever holds it, and announces the release.
static FORCE_UNLOCK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "redis.call('DEL', KEYS[1]) \
         redis.call(ARGV[1], ARGV[2], '') \
         return 1",
    )
});

/// Takes a waiter out of the line (`KEYS[2]`, `KEYS[3]`); if the lock is free,
/// wakes the others, since the lock may have been waiting for this one.
static LEAVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "redis.call('ZREM', KEYS[2], ARGV[1]) \
         redis.call('ZREM', KEYS[3], ARGV[1]) \
         if redis.call('EXISTS', KEYS[1]) == 0 then \
             redis.call(ARGV[2], ARGV[3], '') \
         end \
         return 1",
    )
});

/// Renews the lease only if the lock still holds our token.
static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then \
             return redis.call('PEXPIRE', KEYS[1], ARGV[2]) \
         else \
             return 0 \
         end",
    )
});

/// The server's clock in milliseconds, as the pool scripts start: `now`.
/// A pool is a sorted set of slot tokens scored by when their lease ends
/// (server milliseconds); a member whose score is not above `now` is
/// expired. Every script touches only the pool key and its line, all in
/// the pool key's cluster slot ([`crate::keyspace::Keyspace::line`]), and a
/// write keeps the set's own expiry at least as far out as its longest
/// lease, so an abandoned pool disappears by itself.
const POOL_CLOCK: &str = "redis.replicate_commands() \
     local time = redis.call('TIME') \
     local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000) ";

/// Drops expired slots and lapsed places in the line (`KEYS[2]`, tokens by
/// arrival in microseconds; `KEYS[3]`, tokens by the deadline of their
/// place), then takes a slot for ARGV[1] (token) for ARGV[3] milliseconds
/// if fewer than ARGV[2] are held and fewer waiters are ahead of it than
/// there are free slots (a caller not in line is behind all of it):
/// `{1, 0}` taken (leaving the line), `{0, left}` refused, where `left` is
/// the milliseconds until the soonest lease ends when the pool is full,
/// else -1. A refused caller with ARGV[4] > 0 joins the line, or keeps its
/// place, for that many milliseconds, as in the lock's `ACQUIRE`.
static POOL_ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{POOL_CLOCK} \
         redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now) \
         local lapsed = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now) \
         for i = 1, #lapsed do \
             redis.call('ZREM', KEYS[2], lapsed[i]) \
             redis.call('ZREM', KEYS[3], lapsed[i]) \
         end \
         local rank = redis.call('ZRANK', KEYS[2], ARGV[1]) \
         if not rank then \
             rank = redis.call('ZCARD', KEYS[2]) \
         end \
         local free = tonumber(ARGV[2]) - redis.call('ZCARD', KEYS[1]) \
         if free <= rank then \
             local keep = tonumber(ARGV[4]) \
             if keep > 0 then \
                 local clock = tonumber(time[1]) * 1000000 + tonumber(time[2]) \
                 redis.call('ZADD', KEYS[2], 'NX', string.format('%d', clock), ARGV[1]) \
                 redis.call('ZADD', KEYS[3], now + keep, ARGV[1]) \
                 for k = 2, 3 do \
                     if redis.call('PTTL', KEYS[k]) < keep then \
                         redis.call('PEXPIRE', KEYS[k], keep) \
                     end \
                 end \
             end \
             local left = -1 \
             if free <= 0 then \
                 local soonest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2] \
                 if soonest then \
                     left = tonumber(soonest) - now \
                 end \
             end \
             return {{0, left}} \
         end \
         local lease = tonumber(ARGV[3]) \
         redis.call('ZADD', KEYS[1], now + lease, ARGV[1]) \
         if redis.call('PTTL', KEYS[1]) < lease then \
             redis.call('PEXPIRE', KEYS[1], lease) \
         end \
         redis.call('ZREM', KEYS[2], ARGV[1]) \
         redis.call('ZREM', KEYS[3], ARGV[1]) \
         return {{1, 0}}"
    ))
});

/// Renews ARGV[1]'s slot for ARGV[2] milliseconds if it is still live: 1
/// renewed, 0 expired or gone (an expired member is removed).
static POOL_RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{POOL_CLOCK} \
         local ends = redis.call('ZSCORE', KEYS[1], ARGV[1]) \
         if not ends then \
             return 0 \
         end \
         if tonumber(ends) <= now then \
             redis.call('ZREM', KEYS[1], ARGV[1]) \
             return 0 \
         end \
         local lease = tonumber(ARGV[2]) \
         redis.call('ZADD', KEYS[1], 'XX', now + lease, ARGV[1]) \
         if redis.call('PTTL', KEYS[1]) < lease then \
             redis.call('PEXPIRE', KEYS[1], lease) \
         end \
         return 1"
    ))
});

/// Frees ARGV[1]'s slot and announces it on the pool's channel (ARGV[3])
/// with ARGV[2], `PUBLISH` or `SPUBLISH`: 1 when it was live, 0 when it had
/// expired or was gone (an expired member is removed all the same).
static POOL_RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{POOL_CLOCK} \
         local ends = redis.call('ZSCORE', KEYS[1], ARGV[1]) \
         if not ends then \
             return 0 \
         end \
         redis.call('ZREM', KEYS[1], ARGV[1]) \
         redis.call(ARGV[2], ARGV[3], '') \
         if tonumber(ends) <= now then \
             return 0 \
         end \
         return 1"
    ))
});

/// How many slots are live now (read-only).
static POOL_SIZE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{POOL_CLOCK} \
         return redis.call('ZCOUNT', KEYS[1], '(' .. string.format('%d', now), '+inf')"
    ))
});

/// Takes a waiter (ARGV[1]) out of a pool's line (`KEYS[1]`, `KEYS[2]`)
/// and wakes the others with ARGV[2] on ARGV[3]: a free slot may have been
/// kept for this waiter.
static POOL_LEAVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "redis.call('ZREM', KEYS[1], ARGV[1]) \
         redis.call('ZREM', KEYS[2], ARGV[1]) \
         redis.call(ARGV[2], ARGV[3], '') \
         return 1",
    )
});

/// A value and its remaining time to live, read in one atomic step for the
/// near cache: `{value or false, PTTL}`.
static READ_WITH_TTL: LazyLock<Script> = LazyLock::new(|| {
    Script::new("return {redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1])}")
});

/// Adds an entry key (ARGV[1]) to a tag's index (KEYS[2]), as
/// `{version}|{key}`, and returns the tag's version (KEYS[1], 0 when
/// absent), in one atomic step. The index is a sorted set scored by when
/// each entry expires (server milliseconds, `+inf` for none: ARGV[2] is
/// the entry's time to live in milliseconds, 0 for none), so each write
/// first drops the members whose entries have expired: an index holds the
/// live entries, not every entry ever written. A member's score only moves
/// later: two writers of one key may store it with different TTLs in
/// either order, and the entry lives as long as the longer. The index
/// itself expires with its latest member.
static TAG_ENTRY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "redis.replicate_commands() \
         local time = redis.call('TIME') \
         local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000) \
         local version = redis.call('GET', KEYS[1]) or '0' \
         redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now) \
         local member = version .. '|' .. ARGV[1] \
         local ttl = tonumber(ARGV[2]) \
         local current = redis.call('ZSCORE', KEYS[2], member) \
         if ttl == 0 then \
             redis.call('ZADD', KEYS[2], '+inf', member) \
         elseif not current or (current ~= 'inf' and tonumber(current) < now + ttl) then \
             redis.call('ZADD', KEYS[2], string.format('%d', now + ttl), member) \
         end \
         local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')[2] \
         if last == 'inf' then \
             redis.call('PERSIST', KEYS[2]) \
         else \
             redis.call('PEXPIRE', KEYS[2], tonumber(last) - now) \
         end \
         return tonumber(version)",
    )
});

/// Takes an invalidation's members (ARGV) off a tag's index (KEYS[1]),
/// then lets the index expire with its latest remaining member, so an
/// index that kept an entry without expiry does not outlive it for ever.
static UNTAG: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "redis.replicate_commands() \
         local time = redis.call('TIME') \
         local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000) \
         for i = 1, #ARGV do \
             redis.call('ZREM', KEYS[1], ARGV[i]) \
         end \
         local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')[2] \
         if last == 'inf' then \
             redis.call('PERSIST', KEYS[1]) \
         elseif last and tonumber(last) > now then \
             redis.call('PEXPIRE', KEYS[1], tonumber(last) - now) \
         elseif last then \
             redis.call('DEL', KEYS[1]) \
         end \
         return 1",
    )
});

/// Bumps a tag's version (KEYS[1]) and returns its index (KEYS[2]), in one
/// atomic step. The version is one above the last and never behind the
/// server's clock in microseconds, like a fencing token, so it moves even
/// when the counter had expired; it is kept ARGV[1] milliseconds.
static BUMP_TAG: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "redis.replicate_commands() \
         local now = redis.call('TIME') \
         local clock = tonumber(now[1]) * 1000000 + tonumber(now[2]) \
         local last = tonumber(redis.call('GET', KEYS[1]) or '0') \
         local version = math.max(last + 1, clock) \
         redis.call('SET', KEYS[1], string.format('%d', version), 'PX', ARGV[1]) \
         return redis.call('ZRANGE', KEYS[2], 0, -1)",
    )
});

/// How many keys one `SCAN` step asks for.
const SCAN_BATCH: u64 = 500;

/// How a Redis-speaking store connects, from the builder.
#[derive(Clone, Debug)]
pub(crate) struct ConnectSettings {
    pub(crate) connect_timeout: Duration,
    pub(crate) command_timeout: Duration,
    /// Connect on first use rather than in `build()`.
    pub(crate) lazy: bool,
}

/// How commands reach a Redis deployment. Each answer owns what it needs,
/// so a blocking caller can hand it to the background runtime.
pub(crate) trait Link: Send + Sync + 'static {
    /// `GET key`, on the fastest connection for the caller.
    fn read(&self, key: &str) -> Io<Option<Vec<u8>>>;

    /// One command, bounded by the command timeout.
    fn send<T: FromRedisValue + Send + 'static>(&self, command: Cmd) -> Io<T>;

    /// One script call, bounded by the command timeout.
    fn script<T: FromRedisValue + Send + 'static>(
        &self,
        invocation: ScriptInvocation<'static>,
    ) -> Io<T>;

    /// Deletes every key of `matching` (`SCAN` in batches for its
    /// pattern, each key checked with [`KeyMatch::matches`], and `UNLINK`,
    /// on every primary); returns how many.
    fn unlink_matching(&self, matching: &KeyMatch) -> Io<u64>;

    /// Where every key lives now: the server, or each primary of a cluster,
    /// with the credentials to reach it (the near cache's invalidation
    /// links connect to each).
    fn primaries(&self) -> Io<Vec<ConnectionInfo>>;

    /// How the scripts announce a release: `PUBLISH`, or `SPUBLISH` on a
    /// cluster (sharded pub/sub: the channel lives in the lock's slot).
    fn publish(&self) -> &'static str {
        "PUBLISH"
    }

    /// Subscribes this process to a release channel while the watch lives
    /// (see [`super::subscriber`]).
    fn watch(&self, channel: &str) -> Io<Watch>;
}

/// The bytes under `key` and how long they still live (`None`: no expiry),
/// read together so a copy kept in process never outlives the entry.
pub(crate) fn read_with_ttl<L: Link>(
    link: &L,
    key: &str,
) -> Io<(Option<Vec<u8>>, Option<Duration>)> {
    let read = link.script::<(Option<Vec<u8>>, i64)>(READ_WITH_TTL.key(key));
    Box::pin(async move {
        let (bytes, ttl) = read.await?;
        // PTTL: -1 no expiry, -2 no key (then there are no bytes either).
        let ttl = u64::try_from(ttl).ok().map(Duration::from_millis);
        Ok((bytes, ttl))
    })
}

impl<L: Link> ByteStore for L {
    fn get(&self, key: &str) -> StoreFuture<Option<Vec<u8>>> {
        StoreFuture::Io(self.read(key))
    }

    fn set(&self, key: &str, bytes: Vec<u8>, ttl: Option<Duration>) -> StoreFuture<()> {
        let mut command = redis::cmd("SET");
        command.arg(key).arg(bytes);
        if let Some(ttl) = ttl {
            command.arg("PX").arg(millis(ttl));
        }
        StoreFuture::Io(self.send(command))
    }

    fn delete(&self, key: &str) -> StoreFuture<()> {
        StoreFuture::Io(self.send(keyed("DEL", key)))
    }

    fn delete_prefix(&self, prefix: &str) -> StoreFuture<u64> {
        StoreFuture::Io(self.unlink_matching(&KeyMatch::prefix(prefix)))
    }

    fn delete_matching(&self, matching: &KeyMatch) -> StoreFuture<u64> {
        StoreFuture::Io(self.unlink_matching(matching))
    }
}

impl<L: Link> TagStore for L {
    fn tag_version(&self, tag: &TagKeys) -> StoreFuture<u64> {
        StoreFuture::Io(self.send(keyed("GET", &tag.version)))
            .map(|version: Option<u64>| Ok(version.unwrap_or(0)))
    }

    fn tag_entry(&self, tag: &TagKeys, entry: &str, ttl: Option<Duration>) -> StoreFuture<u64> {
        let mut invocation = TAG_ENTRY.key(&tag.version);
        invocation
            .key(&tag.index)
            .arg(entry)
            .arg(ttl.map_or(0, millis));
        StoreFuture::Io(self.script(invocation))
    }

    fn bump_tag(&self, tag: &TagKeys, idle: Duration) -> StoreFuture<Vec<String>> {
        let mut invocation = BUMP_TAG.key(&tag.version);
        invocation.key(&tag.index).arg(millis(idle));
        StoreFuture::Io(self.script(invocation))
    }

    fn untag(&self, tag: &TagKeys, members: &[String]) -> StoreFuture<()> {
        if members.is_empty() {
            return StoreFuture::ready(Ok(()));
        }
        let mut invocation = UNTAG.key(&tag.index);
        invocation.arg(members);
        StoreFuture::Io(self.script(invocation)).map(|_: i64| Ok(()))
    }
}

impl<L: Link> LockStore for L {
    fn try_lock(
        &self,
        key: &str,
        token: &str,
        lease: Duration,
        fence: Option<Fence<'_>>,
        line: &Line,
        join: Option<Duration>,
    ) -> StoreFuture<Grant<u64>> {
        let mut invocation = ACQUIRE.key(key);
        invocation
            .key(&line.queue)
            .key(&line.beats)
            .arg(token)
            .arg(millis(lease))
            .arg(join.map_or(0, millis));
        if let Some(fence) = fence {
            invocation.key(fence.key).arg(millis(fence.idle));
        }
        StoreFuture::Io(self.script(invocation)).map(grant)
    }

    fn unlock(&self, key: &str, token: &str, line: &Line) -> StoreFuture<bool> {
        let mut invocation = UNLOCK.key(key);
        invocation.arg(token).arg(self.publish()).arg(&line.channel);
        StoreFuture::Io(self.script(invocation)).map(|deleted: i64| Ok(deleted == 1))
    }

    fn renew(&self, key: &str, token: &str, lease: Duration) -> StoreFuture<bool> {
        let mut invocation = RENEW.key(key);
        invocation.arg(token).arg(millis(lease));
        StoreFuture::Io(self.script(invocation)).map(|renewed: i64| Ok(renewed == 1))
    }

    fn holder(&self, key: &str) -> StoreFuture<Option<String>> {
        StoreFuture::Io(self.send(keyed("GET", key)))
    }

    fn force_unlock(&self, key: &str, line: &Line) -> StoreFuture<()> {
        let mut invocation = FORCE_UNLOCK.key(key);
        invocation.arg(self.publish()).arg(&line.channel);
        StoreFuture::Io(self.script(invocation)).map(|_: i64| Ok(()))
    }

    fn note(&self, key: &str, token: &str, ttl: Duration) -> StoreFuture<()> {
        let mut command = keyed("SET", key);
        command.arg(token).arg("PX").arg(millis(ttl));
        StoreFuture::Io(self.send::<()>(command))
    }

    fn leave(&self, key: &str, token: &str, line: &Line) -> StoreFuture<()> {
        let mut invocation = LEAVE.key(key);
        invocation
            .key(&line.queue)
            .key(&line.beats)
            .arg(token)
            .arg(self.publish())
            .arg(&line.channel);
        StoreFuture::Io(self.script(invocation)).map(|_: i64| Ok(()))
    }

    fn watch(&self, line: &Line) -> StoreFuture<Watch> {
        StoreFuture::Io(Link::watch(self, &line.channel))
    }
}

impl<L: Link> PoolStore for L {
    fn acquire_slot(
        &self,
        key: &str,
        token: &str,
        max_size: usize,
        lease: Duration,
        line: &Line,
        join: Option<Duration>,
    ) -> StoreFuture<Grant<()>> {
        let mut invocation = POOL_ACQUIRE.key(key);
        invocation
            .key(&line.queue)
            .key(&line.beats)
            .arg(token)
            .arg(max_size)
            .arg(millis(lease))
            .arg(join.map_or(0, millis));
        StoreFuture::Io(self.script(invocation)).map(|reply| Ok(grant(reply)?.map(|_| ())))
    }

    fn renew_slot(&self, key: &str, token: &str, lease: Duration) -> StoreFuture<bool> {
        let mut invocation = POOL_RENEW.key(key);
        invocation.arg(token).arg(millis(lease));
        StoreFuture::Io(self.script(invocation)).map(|renewed: i64| Ok(renewed == 1))
    }

    fn release_slot(&self, key: &str, token: &str, line: &Line) -> StoreFuture<bool> {
        let mut invocation = POOL_RELEASE.key(key);
        invocation.arg(token).arg(self.publish()).arg(&line.channel);
        StoreFuture::Io(self.script(invocation)).map(|released: i64| Ok(released == 1))
    }

    fn pool_size(&self, key: &str) -> StoreFuture<usize> {
        StoreFuture::Io(self.script(POOL_SIZE.key(key))).map(|size: i64| {
            usize::try_from(size)
                .map_err(|_| Error::Backend(BackendError::new("a pool size below zero")))
        })
    }

    fn leave_pool(&self, _key: &str, token: &str, line: &Line) -> StoreFuture<()> {
        let mut invocation = POOL_LEAVE.key(&line.queue);
        invocation
            .key(&line.beats)
            .arg(token)
            .arg(self.publish())
            .arg(&line.channel);
        StoreFuture::Io(self.script(invocation)).map(|_: i64| Ok(()))
    }
}

/// Bounds `operation` by `limit`. redis-rs has its own response timeout,
/// but while it reconnects (with backoff) or retries a moved slot a
/// command waits; this keeps every call within the limit.
pub(crate) async fn timed<T>(
    limit: Duration,
    operation: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T, Error> {
    match tokio::time::timeout(limit, operation).await {
        Ok(reply) => Ok(reply?),
        Err(_) => Err(Error::Backend(BackendError::timed_out(limit))),
    }
}

/// A command on one key, such as `GET key`: its buffers allocated once at
/// their final size (`redis::cmd` grows them argument by argument, and
/// every cache read builds one).
pub(crate) fn keyed(name: &str, key: &str) -> Cmd {
    let mut command = Cmd::with_capacity(2, name.len() + key.len());
    command.arg(name).arg(key);
    command
}

/// One `SCAN` step over keys matching `pattern`.
pub(crate) fn scan(cursor: u64, pattern: &str) -> Cmd {
    let mut scan = redis::cmd("SCAN");
    scan.arg(cursor)
        .arg("MATCH")
        .arg(pattern)
        .arg("COUNT")
        .arg(SCAN_BATCH);
    scan
}
