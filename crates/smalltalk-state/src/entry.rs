//! What the state store hands out: entries, changes, histories, pages.

use std::fmt;

use serde::Serialize;
use serde_json::Value;
use smalltalk_storage::versioned::{KeyVersion, LeaseId, VersionKind};
use smalltalk_types::{AgentId, StorageKey, Timestamp};

use crate::{Error, Result};

/// What a conditional write is conditioned on: the version the writer read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind", content = "value")]
pub enum Expect {
    /// Nothing: a blind write (no conflict is possible).
    Any,
    /// The key must be absent.
    Absent,
    /// The key must be at this version (its per-key counter).
    Version(u64),
    /// The key's last change must be this revision (its `mod_revision`,
    /// [`StateEntry::revision`]): the most precise, as in etcd.
    Revision(u64),
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expect::Any => f.write_str("any version"),
            Expect::Absent => f.write_str("no value"),
            Expect::Version(version) => write!(f, "version {version}"),
            Expect::Revision(revision) => write!(f, "revision {revision}"),
        }
    }
}

impl Expect {
    /// What a writer that read `entry` (or nothing) expects.
    pub fn read(entry: Option<&StateEntry>) -> Self {
        entry.map_or(Expect::Absent, |entry| Expect::Revision(entry.revision))
    }
}

/// A key's value at some revision.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct StateEntry {
    /// The key.
    pub key: StorageKey,
    /// The value.
    pub value: Value,
    /// The revision of the key's last change (etcd's `mod_revision`).
    pub revision: u64,
    /// The revision that created the key.
    pub create_revision: u64,
    /// The key's version: 1 on creation, plus one per write.
    pub version: u64,
    /// The lease it is attached to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease: Option<LeaseId>,
    /// Who wrote this version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub author: Option<AgentId>,
    /// When, by the writer's clock.
    pub timestamp: Timestamp,
}

/// What one revision did to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum ChangeKind {
    /// A value was written.
    Put,
    /// The key was deleted.
    Delete,
    /// A value was written, then erased by a purge.
    Purged,
    /// A value was written that does not decode as JSON (written around
    /// this crate, or damaged); `value` is `None`.
    Undecodable,
}

/// One version of a key, as history and watches show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct StateChange {
    /// The key.
    pub key: StorageKey,
    /// Put, delete or purged.
    pub kind: ChangeKind,
    /// The value written (`None` for a delete or a purged version).
    pub value: Option<Value>,
    /// The revision.
    pub revision: u64,
    /// The key's create revision (0 for a delete).
    pub create_revision: u64,
    /// The key's version (0 for a delete).
    pub version: u64,
    /// Who wrote it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub author: Option<AgentId>,
    /// When.
    pub timestamp: Timestamp,
}

/// A key's history, newest first.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct History {
    /// Versions, newest first.
    pub changes: Vec<StateChange>,
    /// If compaction removed older versions: the revision of the oldest one
    /// kept (the history is complete from there on).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compacted_below: Option<u64>,
}

/// A page of [`StateStore::list`](crate::StateStore::list).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Page {
    /// The revision read at.
    pub revision: u64,
    /// Entries in key order.
    pub entries: Vec<StateEntry>,
    /// The continuation: pass as `after` for the next page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<StorageKey>,
}

/// What a write did.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct PutOutcome {
    /// What is stored now.
    pub entry: StateEntry,
    /// How a conflict was resolved, if there was one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolved: Option<Resolved>,
}

/// How a conflicting write went through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Resolved {
    /// Last write wins: the newer version was overwritten.
    Overwrote,
    /// The two changes were merged.
    Merged,
    /// The custom resolver chose the value.
    Resolver,
}

pub(crate) fn decode(key: &StorageKey, revision: u64, bytes: &[u8]) -> Result<Value> {
    serde_json::from_slice(bytes).map_err(|source| Error::Undecodable {
        key: key.clone(),
        revision,
        source,
    })
}

impl StateEntry {
    /// The entry of a live version (`None` for a delete), or
    /// [`Error::Purged`].
    pub(crate) fn from_version(version: KeyVersion) -> Result<Option<Self>> {
        match version.kind {
            VersionKind::Delete => Ok(None),
            VersionKind::Purged => Err(Error::Purged {
                key: version.key,
                revision: version.revision,
            }),
            VersionKind::Put => {
                let bytes = version.value.unwrap_or_default();
                Ok(Some(Self {
                    value: decode(&version.key, version.revision, &bytes)?,
                    key: version.key,
                    revision: version.revision,
                    create_revision: version.create_revision,
                    version: version.version,
                    lease: version.lease,
                    author: version.author,
                    timestamp: version.timestamp,
                }))
            }
        }
    }
}

impl StateChange {
    /// Never fails: a value that does not decode comes as
    /// [`ChangeKind::Undecodable`], so it cannot stop a watch or a history.
    pub(crate) fn from_version(version: KeyVersion) -> Self {
        let (kind, value) = match (version.kind, &version.value) {
            (VersionKind::Put, Some(bytes)) => {
                match decode(&version.key, version.revision, bytes) {
                    Ok(value) => (ChangeKind::Put, Some(value)),
                    Err(error) => {
                        tracing::error!(key = %version.key, revision = version.revision, %error, "a stored state value does not decode");
                        (ChangeKind::Undecodable, None)
                    }
                }
            }
            (VersionKind::Put, None) => (ChangeKind::Undecodable, None),
            (VersionKind::Delete, _) => (ChangeKind::Delete, None),
            (VersionKind::Purged, _) => (ChangeKind::Purged, None),
        };
        Self {
            kind,
            value,
            key: version.key,
            revision: version.revision,
            create_revision: version.create_revision,
            version: version.version,
            author: version.author,
            timestamp: version.timestamp,
        }
    }
}
