//! Versioned records in process memory: the reference model the SQL
//! backends are compared against.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::time::Duration;

use smalltalk_types::{AgentId, StorageKey, Timestamp};

use super::{
    CompactOutcome, Head, KeyHistory, KeyPrefix, KeyVersion, Lease, LeaseId, PurgeOutcome,
    RangePage, RangeRequest, RevisionBounds, Txn, TxnResponse, TxnView, VersionKind,
    VersionedStats, check_revision, plan, tombstone,
};
use crate::{Error, Result};

/// Every key's versions, by revision.
#[derive(Debug, Default)]
pub(crate) struct VersionedData {
    revision: u64,
    compact_revision: u64,
    keys: BTreeMap<StorageKey, KeyRecords>,
    /// The keys each stored revision wrote, with its timestamp.
    revisions: BTreeMap<u64, (Timestamp, Vec<StorageKey>)>,
    leases: BTreeMap<LeaseId, Lease>,
    last_lease: u64,
}

#[derive(Debug, Default)]
struct KeyRecords {
    versions: BTreeMap<u64, KeyVersion>,
    /// The oldest revision kept, once compaction removed older ones.
    trimmed_below: Option<u64>,
}

impl KeyRecords {
    fn head(&self) -> Option<Head> {
        self.versions.values().next_back().map(Head::of)
    }

    /// The version current at `at`.
    fn at(&self, at: u64) -> Option<&KeyVersion> {
        self.versions
            .range(..=at)
            .next_back()
            .map(|(_, version)| version)
    }
}

struct View<'a> {
    data: &'a VersionedData,
    now: Timestamp,
}

impl TxnView for View<'_> {
    fn head(&mut self, key: &StorageKey) -> Result<Option<Head>> {
        Ok(self.data.keys.get(key).and_then(KeyRecords::head))
    }

    fn latest(&mut self, key: &StorageKey) -> Result<Option<KeyVersion>> {
        Ok(self
            .data
            .keys
            .get(key)
            .and_then(|records| records.versions.values().next_back())
            .filter(|version| version.is_live())
            .cloned())
    }

    fn lease_exists(&mut self, lease: LeaseId) -> Result<bool> {
        Ok(self.data.lease_live(lease, self.now))
    }
}

impl VersionedData {
    pub(crate) fn bounds(&self) -> RevisionBounds {
        RevisionBounds {
            revision: self.revision,
            compact_revision: self.compact_revision,
        }
    }

    fn lease_live(&self, lease: LeaseId, now: Timestamp) -> bool {
        self.leases
            .get(&lease)
            .is_some_and(|lease| lease.expires_at > now)
    }

    fn apply(&mut self, writes: Vec<KeyVersion>) {
        let Some(first) = writes.first() else {
            return;
        };
        let (revision, timestamp) = (first.revision, first.timestamp);
        self.revision = revision;
        let mut keys = Vec::with_capacity(writes.len());
        for version in writes {
            keys.push(version.key.clone());
            self.keys
                .entry(version.key.clone())
                .or_default()
                .versions
                .insert(revision, version);
        }
        keys.sort();
        self.revisions.insert(revision, (timestamp, keys));
    }

    pub(crate) fn txn(&mut self, txn: &Txn, now: Timestamp) -> Result<TxnResponse> {
        txn.validate()?;
        let planned = plan(txn, &mut View { data: self, now }, self.revision, now)?;
        self.apply(planned.writes);
        Ok(planned.response)
    }

    pub(crate) fn get(&self, key: &StorageKey, at: Option<u64>) -> Result<Option<KeyVersion>> {
        let at = self.resolve(at)?;
        let found = self.keys.get(key).and_then(|records| records.at(at));
        if found.is_none() && at < self.compact_revision {
            return Err(self.compacted());
        }
        Ok(found
            .filter(|version| version.kind != VersionKind::Delete)
            .cloned())
    }

    fn resolve(&self, at: Option<u64>) -> Result<u64> {
        let at = at.unwrap_or(self.revision);
        check_revision(at, self.bounds())?;
        Ok(at)
    }

    fn compacted(&self) -> Error {
        Error::Compacted {
            compact_revision: self.compact_revision,
        }
    }

    pub(crate) fn range(&self, request: &RangeRequest) -> Result<RangePage> {
        super::check_limit(request.limit)?;
        let at = self.resolve(request.at)?;
        if at < self.compact_revision {
            return Err(self.compacted());
        }
        let start = match &request.after_key {
            Some(after) if after.as_str() >= request.prefix.as_str() => {
                Bound::Excluded(after.as_str())
            }
            _ => Bound::Included(request.prefix.as_str()),
        };
        let mut items = Vec::new();
        let mut next = None;
        for (_, records) in self
            .keys
            .range::<str, _>((start, Bound::Unbounded))
            .take_while(|(key, _)| request.prefix.matches(key.as_str()))
        {
            let Some(version) = records.at(at).filter(|version| version.is_live()) else {
                continue;
            };
            if items.len() == request.limit as usize {
                next = items.last().map(|last: &KeyVersion| last.key.clone());
                break;
            }
            items.push(version.clone());
        }
        Ok(RangePage {
            revision: at,
            items,
            next,
        })
    }

    pub(crate) fn history(
        &self,
        key: &StorageKey,
        before: Option<u64>,
        limit: u32,
    ) -> Result<KeyHistory> {
        super::check_limit(limit)?;
        let Some(records) = self.keys.get(key) else {
            return Ok(KeyHistory {
                versions: Vec::new(),
                compacted_below: None,
            });
        };
        let versions = records
            .versions
            .range(..before.unwrap_or(u64::MAX))
            .rev()
            .take(limit as usize)
            .map(|(_, version)| version.clone())
            .collect();
        Ok(KeyHistory {
            versions,
            compacted_below: records.trimmed_below,
        })
    }

    pub(crate) fn read_revisions(
        &self,
        prefix: &KeyPrefix,
        after: u64,
        limit: u32,
    ) -> Result<Vec<KeyVersion>> {
        super::check_limit(limit)?;
        if after.saturating_add(1) < self.compact_revision {
            return Err(self.compacted());
        }
        let mut out = Vec::new();
        for (revision, (_, keys)) in self.revisions.range(after.saturating_add(1)..) {
            for key in keys.iter().filter(|key| prefix.matches(key.as_str())) {
                if let Some(version) = self
                    .keys
                    .get(key)
                    .and_then(|records| records.versions.get(revision))
                {
                    out.push(version.clone());
                }
            }
            if out.len() >= limit as usize {
                break;
            }
        }
        Ok(out)
    }

    pub(crate) fn revision_before(&self, time: Timestamp) -> Option<u64> {
        self.revisions
            .iter()
            .filter(|(_, (timestamp, _))| *timestamp < time)
            .map(|(revision, _)| *revision)
            .next_back()
    }

    pub(crate) fn compact(&mut self, revision: u64, keep_versions: u32) -> Result<CompactOutcome> {
        if keep_versions == 0 {
            return Err(Error::InvalidRequest {
                reason: super::InvalidRequest::BadKeepVersions,
            });
        }
        check_revision(revision, self.bounds())?;
        let point = self.compact_revision.max(revision);
        self.compact_revision = point;
        let mut removed = 0;
        let mut emptied = Vec::new();
        for (key, records) in &mut self.keys {
            let doomed = doomed_revisions(records, point, keep_versions);
            for revision in &doomed {
                records.versions.remove(revision);
                if let Some((_, keys)) = self.revisions.get_mut(revision) {
                    keys.retain(|written| written != key);
                }
            }
            removed += doomed.len() as u64;
            if records.versions.is_empty() {
                emptied.push(key.clone());
            } else if !doomed.is_empty() {
                records.trimmed_below = records.versions.keys().next().copied();
            }
        }
        for key in emptied {
            self.keys.remove(&key);
        }
        self.revisions.retain(|_, (_, keys)| !keys.is_empty());
        Ok(CompactOutcome {
            compact_revision: point,
            removed,
        })
    }

    pub(crate) fn grant_lease(&mut self, ttl: Duration, now: Timestamp) -> Result<Lease> {
        super::check_lease_ttl(ttl)?;
        self.last_lease += 1;
        let lease = Lease {
            id: LeaseId(self.last_lease),
            ttl,
            expires_at: now.saturating_add(ttl),
        };
        self.leases.insert(lease.id, lease);
        Ok(lease)
    }

    pub(crate) fn keep_lease_alive(&mut self, id: LeaseId, now: Timestamp) -> Result<Lease> {
        if !self.lease_live(id, now) {
            return Err(Error::LeaseNotFound { lease: id });
        }
        let lease = self.leases.get_mut(&id).expect("checked live");
        lease.expires_at = now.saturating_add(lease.ttl);
        Ok(*lease)
    }

    pub(crate) fn revoke_lease(
        &mut self,
        id: LeaseId,
        author: Option<&AgentId>,
        now: Timestamp,
    ) -> Result<Option<u64>> {
        if self.leases.remove(&id).is_none() {
            return Err(Error::LeaseNotFound { lease: id });
        }
        let attached: Vec<StorageKey> = self
            .keys
            .iter()
            .filter(|(_, records)| {
                records
                    .head()
                    .is_some_and(|head| head.live && head.lease == Some(id))
            })
            .map(|(key, _)| key.clone())
            .collect();
        Ok(self.delete_all(attached, author, now))
    }

    /// Deletes `keys` (all live) in one revision.
    fn delete_all(
        &mut self,
        keys: Vec<StorageKey>,
        author: Option<&AgentId>,
        now: Timestamp,
    ) -> Option<u64> {
        if keys.is_empty() {
            return None;
        }
        let revision = self.revision + 1;
        let txn = Txn {
            author: author.cloned(),
            ..Txn::default()
        };
        let writes = keys
            .into_iter()
            .map(|key| tombstone(key, revision, &txn, now))
            .collect();
        self.apply(writes);
        Some(revision)
    }

    pub(crate) fn expire_leases(&mut self, now: Timestamp) -> u64 {
        let expired: Vec<LeaseId> = self
            .leases
            .values()
            .filter(|lease| lease.expires_at <= now)
            .map(|lease| lease.id)
            .collect();
        for id in &expired {
            let _ = self.revoke_lease(*id, None, now);
        }
        expired.len() as u64
    }

    pub(crate) fn purge_prefix(
        &mut self,
        prefix: &KeyPrefix,
        author: Option<&AgentId>,
        now: Timestamp,
    ) -> Result<PurgeOutcome> {
        if prefix.as_str().is_empty() {
            return Err(Error::InvalidRequest {
                reason: super::InvalidRequest::EmptyPrefix,
            });
        }
        let under: Vec<StorageKey> = self
            .keys
            .range::<str, _>((Bound::Included(prefix.as_str()), Bound::Unbounded))
            .take_while(|(key, _)| prefix.matches(key.as_str()))
            .map(|(key, _)| key.clone())
            .collect();
        let mut erased = 0;
        for key in &under {
            for version in self
                .keys
                .get_mut(key)
                .expect("listed")
                .versions
                .values_mut()
            {
                if version.kind == VersionKind::Put {
                    version.kind = VersionKind::Purged;
                    version.value = None;
                    erased += 1;
                }
            }
        }
        // What was live is now erased: those are the keys to delete.
        let live: Vec<StorageKey> = under
            .into_iter()
            .filter(|key| {
                self.keys[key]
                    .versions
                    .values()
                    .next_back()
                    .is_some_and(|version| version.kind == VersionKind::Purged)
            })
            .collect();
        let deleted = live.len() as u64;
        let revision = self.delete_all(live, author, now);
        Ok(PurgeOutcome {
            revision,
            deleted,
            erased,
        })
    }

    pub(crate) fn stats(&self) -> VersionedStats {
        let versions = self.keys.values().map(|records| records.versions.values());
        VersionedStats {
            keys: self
                .keys
                .values()
                .filter(|records| records.head().is_some_and(|head| head.live))
                .count() as u64,
            versions: versions.clone().map(|versions| versions.len() as u64).sum(),
            value_bytes: versions
                .flatten()
                .filter_map(|version| version.value.as_ref())
                .map(|value| value.len() as u64)
                .sum(),
            leases: self.leases.len() as u64,
            bounds: self.bounds(),
        }
    }
}

/// The revisions compaction at `point` removes from one key: below the
/// point, all but its newest `keep` versions overall and the version
/// current at the point (the newest at or below it); all of them if the key's latest version is a
/// tombstone below the point.
fn doomed_revisions(records: &KeyRecords, point: u64, keep: u32) -> Vec<u64> {
    let Some((latest_revision, latest)) = records.versions.iter().next_back() else {
        return Vec::new();
    };
    if latest.kind == VersionKind::Delete && *latest_revision < point {
        return records.versions.keys().copied().collect();
    }
    let current_at_point = records
        .versions
        .range(..=point)
        .next_back()
        .map(|(r, _)| *r);
    records
        .versions
        .keys()
        .rev()
        .skip(keep as usize)
        .filter(|revision| **revision < point && Some(**revision) != current_at_point)
        .copied()
        .collect()
}
