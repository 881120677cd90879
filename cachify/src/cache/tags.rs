//! Tags and clearing: deleting many entries at once.
//!
//! **Tags without a race.** An entry stored under tags must not outlive an
//! invalidation of any of them, even when its value was computed from data
//! read before the invalidation and is written after it. Each tag has a
//! version and an index of entry keys (see [`crate::keyspace`]):
//!
//! 1. a caller about to compute reads its tags' versions, before the
//!    function reads any data;
//! 2. after storing the entry it adds the key to each tag's index and reads
//!    that tag's version again, in one atomic step per tag, and deletes the
//!    entry if any version moved;
//! 3. an invalidation bumps the version and reads the index in one atomic
//!    step, deletes every entry it read, then takes those members off the
//!    index (a member names the version it was added at, so an entry
//!    written again since stays indexed).
//!
//! Step 2 and step 3 of one tag are ordered by the store. If 3 comes
//! first, the writer sees the new version and deletes its entry; if 2
//! comes first, the invalidation finds the key in the index and deletes it,
//! after the write. Either way the value is gone. Nothing is read on a hit,
//! and every step touches one tag's two keys, which share a cluster slot.

use std::time::Duration;

use super::Core;
use crate::error::Error;
use crate::keyspace::{KeyKind, KeyTemplate};
use crate::mode::Mode;
use crate::store::StoreFuture;

/// How long a tag's version is kept after its last invalidation: far longer
/// than any computation that read the version before. An expired version
/// reads as 0, which differs from every bumped one, so a writer that read
/// it before still sees it move.
const TAG_IDLE: Duration = Duration::from_secs(24 * 3600);

/// How many of an invalidation's deletes are in flight at once: enough to
/// fill the pipeline, few enough not to crowd out other callers.
const DELETES_AT_ONCE: usize = 64;

impl Core {
    /// The versions of `tags` before a computation; `None` when they are
    /// unknown (the breaker is open, or the store did not answer), and the
    /// value must not be stored.
    pub(crate) async fn tag_versions<M: Mode>(&self, tags: &[String]) -> Option<Vec<u64>> {
        let mut versions = Vec::with_capacity(tags.len());
        if tags.is_empty() {
            return Some(versions);
        }
        if !self.health.breaker.allows() {
            return None;
        }
        for tag in tags {
            match M::io(self.tags.tag_version(&self.keys.tag(tag))).await {
                Ok(version) => versions.push(version),
                Err(error) => {
                    self.tag_failed("read a tag's version", tag, &error);
                    return None;
                }
            }
        }
        Some(versions)
    }

    /// After `key` was stored: indexes it under each tag, and deletes it
    /// again if a tag's version moved since `before`, or if it could not be
    /// indexed (an invalidation could not find it).
    pub(crate) async fn tag_written<M: Mode>(
        &self,
        key: &str,
        tags: &[String],
        ttl: Option<Duration>,
        before: Vec<u64>,
    ) {
        let mut keep = true;
        for (tag, before) in tags.iter().zip(before) {
            match M::io(self.tags.tag_entry(&self.keys.tag(tag), key, ttl)).await {
                Ok(now) => keep &= now == before,
                Err(error) => {
                    self.tag_failed("index an entry under a tag", tag, &error);
                    keep = false;
                }
            }
        }
        if !keep && let Err(error) = M::io(self.values.delete(key)).await {
            tracing::warn!(
                key,
                %error,
                "cachify: could not delete an entry computed during an invalidation of its tags"
            );
        }
    }

    fn tag_failed(&self, operation: &str, tag: &str, error: &Error) {
        if let Some(suppressed) = self.health.cache_log.admit() {
            tracing::warn!(
                operation,
                tag,
                %error,
                suppressed,
                "cachify: tag operation failed; the value is not kept in the cache"
            );
        }
    }

    /// Deletes every entry stored under any of `tags`, by any function.
    pub(crate) async fn invalidate_tags<M: Mode>(&self, tags: &[String]) -> Result<(), Error> {
        let scope = self.keys.cached_scope();
        for tag in tags {
            let keys = self.keys.tag(tag);
            let members = M::io(self.tags.bump_tag(&keys, TAG_IDLE)).await?;
            // An index names entry keys only; anything else (written from
            // outside) is left alone, so this never deletes a lock.
            let entries = members
                .iter()
                .filter_map(|member| member.split_once('|'))
                .map(|(_, entry)| entry)
                .filter(|entry| entry.starts_with(&scope));
            let deletes = entries.map(|entry| self.values.delete(entry)).collect();
            M::io(StoreFuture::all(deletes, DELETES_AT_ONCE)).await?;
            M::io(self.tags.untag(&keys, &members)).await?;
        }
        Ok(())
    }

    /// Deletes every entry a template renders for `kind` (`_clear`);
    /// returns how many. `integers`: which values are primitive integers.
    pub(crate) async fn clear_template<M: Mode>(
        &self,
        kind: KeyKind,
        template: &KeyTemplate,
        integers: &'static [bool],
    ) -> Result<u64, Error> {
        let matching = self.keys.template_keys(kind, template, integers);
        M::io(self.values.delete_matching(&matching)).await
    }

    /// Deletes every cached value of this client: `#[cached]` entries and
    /// HTTP responses; never a lock, a fencing counter or a tag's version.
    pub(crate) async fn clear_values<M: Mode>(&self) -> Result<u64, Error> {
        let mut deleted = 0;
        for scope in self.keys.value_scopes() {
            deleted += self.delete_prefix::<M>(&scope).await?;
        }
        Ok(deleted)
    }
}
