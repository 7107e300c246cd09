//! Versioned records on SQLite. Each write is one job of the group-commit
//! writer, in its own savepoint: it reads the revision, plans with the
//! shared planner, and writes, so revisions are gap-free and follow commit
//! order (one write connection; other processes wait for its lock).

use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, Row, params};
use smalltalk_types::{AgentId, StorageKey, Timestamp};

use super::{SqliteStore, sqlite_error};
use crate::codec::{to_i64, to_u64};
use crate::versioned::{
    self, CompactOutcome, Head, KeyHistory, KeyPrefix, KeyVersion, Lease, LeaseId, PurgeOutcome,
    RangePage, RangeRequest, RevisionBounds, Txn, TxnResponse, TxnView, VersionKind,
    VersionedStats, VersionedStore,
};
use crate::{Error, Result};

/// The columns of a version row, in this order.
const VERSION_COLUMNS: &str = "v.key, v.kind, v.value, v.revision, v.create_revision, v.version, v.lease, v.author, v.timestamp";

fn decode_version(row: &Row<'_>) -> Result<KeyVersion> {
    let key: String = row.get(0).map_err(sqlite_error)?;
    let kind: String = row.get(1).map_err(sqlite_error)?;
    let author: Option<String> = row.get(7).map_err(sqlite_error)?;
    Ok(KeyVersion {
        key: StorageKey::parse(&key)?,
        kind: VersionKind::parse(&kind).ok_or_else(|| Error::Backend {
            backend: "sqlite",
            source: format!("state version of `{key}` has unknown kind `{kind}`").into(),
        })?,
        value: row.get(2).map_err(sqlite_error)?,
        revision: to_u64(row.get(3).map_err(sqlite_error)?),
        create_revision: to_u64(row.get(4).map_err(sqlite_error)?),
        version: to_u64(row.get(5).map_err(sqlite_error)?),
        lease: row
            .get::<_, Option<i64>>(6)
            .map_err(sqlite_error)?
            .map(|lease| LeaseId(to_u64(lease))),
        author: author.as_deref().map(AgentId::parse).transpose()?,
        timestamp: Timestamp::from_micros(row.get(8).map_err(sqlite_error)?),
    })
}

fn collect_versions(mut rows: rusqlite::Rows<'_>) -> Result<Vec<KeyVersion>> {
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(sqlite_error)? {
        out.push(decode_version(row)?);
    }
    Ok(out)
}

fn bounds(conn: &Connection) -> Result<RevisionBounds> {
    conn.prepare_cached("SELECT revision, compact_revision FROM state_meta WHERE id = 1")
        .and_then(|mut statement| {
            statement.query_row([], |row| {
                Ok(RevisionBounds {
                    revision: to_u64(row.get(0)?),
                    compact_revision: to_u64(row.get(1)?),
                })
            })
        })
        .map_err(sqlite_error)
}

/// Runs several statements of a read on one snapshot.
fn snapshot<T>(conn: &Connection, work: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
    conn.execute_batch("BEGIN").map_err(sqlite_error)?;
    let outcome = work(conn);
    let end = conn.execute_batch(if outcome.is_ok() {
        "COMMIT"
    } else {
        "ROLLBACK"
    });
    let value = outcome?;
    end.map_err(sqlite_error)?;
    Ok(value)
}

struct View<'a> {
    conn: &'a Connection,
    now: i64,
}

impl TxnView for View<'_> {
    fn head(&mut self, key: &StorageKey) -> Result<Option<Head>> {
        head(self.conn, key)
    }

    fn latest(&mut self, key: &StorageKey) -> Result<Option<KeyVersion>> {
        let sql = format!(
            "SELECT {VERSION_COLUMNS} FROM state_keys k
             JOIN state_versions v ON v.key = k.key AND v.revision = k.mod_revision
             WHERE k.key = ?1 AND k.live = 1"
        );
        let mut statement = self.conn.prepare_cached(&sql).map_err(sqlite_error)?;
        let rows = statement.query([key.as_str()]).map_err(sqlite_error)?;
        Ok(collect_versions(rows)?.pop())
    }

    fn lease_exists(&mut self, lease: LeaseId) -> Result<bool> {
        self.conn
            .prepare_cached("SELECT 1 FROM state_leases WHERE id = ?1 AND expires_at > ?2")
            .and_then(|mut statement| {
                statement
                    .query_row(params![to_i64(lease.0), self.now], |_| Ok(()))
                    .optional()
            })
            .map(|found| found.is_some())
            .map_err(sqlite_error)
    }
}

fn head(conn: &Connection, key: &StorageKey) -> Result<Option<Head>> {
    conn.prepare_cached(
        "SELECT live, mod_revision, create_revision, version, lease FROM state_keys WHERE key = ?1",
    )
    .and_then(|mut statement| {
        statement
            .query_row([key.as_str()], |row| {
                Ok(Head {
                    live: row.get(0)?,
                    mod_revision: to_u64(row.get(1)?),
                    create_revision: to_u64(row.get(2)?),
                    version: to_u64(row.get(3)?),
                    lease: row.get::<_, Option<i64>>(4)?.map(|l| LeaseId(to_u64(l))),
                })
            })
            .optional()
    })
    .map_err(sqlite_error)
}

/// Writes the planned versions (all of one revision) and moves the heads
/// and the revision.
fn apply(conn: &Connection, writes: &[KeyVersion]) -> Result<()> {
    let Some(first) = writes.first() else {
        return Ok(());
    };
    let mut insert = conn
        .prepare_cached(
            "INSERT INTO state_versions (key, revision, kind, value, create_revision, version,
                                         lease, author, timestamp)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )
        .map_err(sqlite_error)?;
    let mut upsert = conn
        .prepare_cached(
            "INSERT INTO state_keys (key, live, mod_revision, create_revision, version, lease)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (key) DO UPDATE SET live = excluded.live,
                mod_revision = excluded.mod_revision, create_revision = excluded.create_revision,
                version = excluded.version, lease = excluded.lease",
        )
        .map_err(sqlite_error)?;
    for version in writes {
        let lease = version.lease.map(|lease| to_i64(lease.0));
        insert
            .execute(params![
                version.key.as_str(),
                to_i64(version.revision),
                version.kind.as_str(),
                version.value,
                to_i64(version.create_revision),
                to_i64(version.version),
                lease,
                version.author.as_ref().map(AgentId::as_str),
                version.timestamp.as_micros(),
            ])
            .map_err(sqlite_error)?;
        upsert
            .execute(params![
                version.key.as_str(),
                version.kind == VersionKind::Put,
                to_i64(version.revision),
                to_i64(version.create_revision),
                to_i64(version.version),
                lease,
            ])
            .map_err(sqlite_error)?;
    }
    conn.prepare_cached("UPDATE state_meta SET revision = ?1 WHERE id = 1")
        .and_then(|mut statement| statement.execute([to_i64(first.revision)]))
        .map_err(sqlite_error)?;
    Ok(())
}

/// Deletes `keys` (all live) in one revision; returns it.
fn delete_all(
    conn: &Connection,
    keys: Vec<StorageKey>,
    author: Option<AgentId>,
    now: Timestamp,
) -> Result<Option<u64>> {
    if keys.is_empty() {
        return Ok(None);
    }
    let revision = bounds(conn)?.revision + 1;
    let txn = Txn {
        author,
        ..Txn::default()
    };
    let writes: Vec<KeyVersion> = keys
        .into_iter()
        .map(|key| versioned::tombstone(key, revision, &txn, now))
        .collect();
    apply(conn, &writes)?;
    Ok(Some(revision))
}

fn keys_of(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> Result<Vec<StorageKey>> {
    let mut statement = conn.prepare_cached(sql).map_err(sqlite_error)?;
    let mut rows = statement.query(params).map_err(sqlite_error)?;
    let mut keys = Vec::new();
    while let Some(row) = rows.next().map_err(sqlite_error)? {
        let key: String = row.get(0).map_err(sqlite_error)?;
        keys.push(StorageKey::parse(&key)?);
    }
    Ok(keys)
}

fn revoke(
    conn: &Connection,
    lease: LeaseId,
    author: Option<AgentId>,
    now: Timestamp,
) -> Result<Option<u64>> {
    let removed = conn
        .prepare_cached("DELETE FROM state_leases WHERE id = ?1")
        .and_then(|mut statement| statement.execute([to_i64(lease.0)]))
        .map_err(sqlite_error)?;
    if removed == 0 {
        return Err(Error::LeaseNotFound { lease });
    }
    let keys = keys_of(
        conn,
        "SELECT key FROM state_keys WHERE lease = ?1 AND live = 1 ORDER BY key",
        [to_i64(lease.0)],
    )?;
    delete_all(conn, keys, author, now)
}

fn compact(conn: &Connection, revision: u64, keep: u32) -> Result<CompactOutcome> {
    let current = bounds(conn)?;
    versioned::check_revision(revision, current)?;
    let point = to_i64(current.compact_revision.max(revision));
    // Keys deleted before the point go whole.
    let mut removed = conn
        .prepare_cached(
            "DELETE FROM state_versions WHERE key IN
                (SELECT key FROM state_keys WHERE live = 0 AND mod_revision < ?1)",
        )
        .and_then(|mut statement| statement.execute([point]))
        .map_err(sqlite_error)? as u64;
    conn.prepare_cached("DELETE FROM state_keys WHERE live = 0 AND mod_revision < ?1")
        .and_then(|mut statement| statement.execute([point]))
        .map_err(sqlite_error)?;
    // Below the point, the rest keep their newest `keep` and the version
    // current at the point.
    let trimmed = keys_of(
        conn,
        "DELETE FROM state_versions WHERE rowid IN (
            SELECT rowid FROM (
                SELECT rowid, key, revision,
                       ROW_NUMBER() OVER (PARTITION BY key ORDER BY revision DESC) AS newest,
                       MAX(CASE WHEN revision <= ?1 THEN revision END)
                           OVER (PARTITION BY key) AS at_point
                FROM state_versions
                WHERE key IN (SELECT key FROM state_versions WHERE revision < ?1)
            ) WHERE newest > ?2 AND revision < ?1 AND revision <> at_point
         ) RETURNING key",
        params![point, i64::from(keep)],
    )?;
    removed += trimmed.len() as u64;
    let mut update = conn
        .prepare_cached(
            "UPDATE state_keys SET trimmed_below =
                (SELECT MIN(revision) FROM state_versions WHERE key = ?1) WHERE key = ?1",
        )
        .map_err(sqlite_error)?;
    let mut seen = std::collections::BTreeSet::new();
    for key in trimmed {
        if seen.insert(key.clone()) {
            update.execute([key.as_str()]).map_err(sqlite_error)?;
        }
    }
    conn.prepare_cached("UPDATE state_meta SET compact_revision = ?1 WHERE id = 1")
        .and_then(|mut statement| statement.execute([point]))
        .map_err(sqlite_error)?;
    Ok(CompactOutcome {
        compact_revision: to_u64(point),
        removed,
    })
}

fn prefix_bounds(prefix: &KeyPrefix) -> (String, Option<String>) {
    (prefix.as_str().to_owned(), prefix.upper_bound())
}

impl SqliteStore {
    async fn write_versioned<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let (result, revision) = self
            .write(move |conn| {
                let result = work(conn)?;
                Ok((result, bounds(conn)?.revision))
            })
            .await?;
        self.revision_watch.advance(revision);
        Ok(result)
    }
}

#[async_trait]
impl VersionedStore for SqliteStore {
    async fn txn(&self, txn: &Txn) -> Result<TxnResponse> {
        txn.validate()?;
        let (txn, now) = (txn.clone(), self.clock.now());
        let response = self
            .write(move |conn| {
                let current = bounds(conn)?.revision;
                let mut view = View {
                    conn,
                    now: now.as_micros(),
                };
                let planned = versioned::plan(&txn, &mut view, current, now)?;
                apply(conn, &planned.writes)?;
                Ok(planned.response)
            })
            .await?;
        self.revision_watch.advance(response.revision);
        Ok(response)
    }

    async fn get_version(&self, key: &StorageKey, at: Option<u64>) -> Result<Option<KeyVersion>> {
        let key = key.clone();
        self.read_inline(move |conn| {
            snapshot(conn, |conn| {
                let current = bounds(conn)?;
                let at_revision = at.unwrap_or(current.revision);
                versioned::check_revision(at_revision, current)?;
                let sql = format!(
                    "SELECT {VERSION_COLUMNS} FROM state_versions v
                     WHERE v.key = ?1 AND v.revision <= ?2 ORDER BY v.revision DESC LIMIT 1"
                );
                let mut statement = conn.prepare_cached(&sql).map_err(sqlite_error)?;
                let rows = statement
                    .query(params![key.as_str(), to_i64(at_revision)])
                    .map_err(sqlite_error)?;
                let found = collect_versions(rows)?.pop();
                if found.is_none() && at_revision < current.compact_revision {
                    return Err(Error::Compacted {
                        compact_revision: current.compact_revision,
                    });
                }
                Ok(found.filter(|version| version.kind != VersionKind::Delete))
            })
        })
        .await
    }

    async fn range(&self, request: &RangeRequest) -> Result<RangePage> {
        versioned::check_limit(request.limit)?;
        let request = request.clone();
        self.read_blocking(move |conn| {
            snapshot(conn, |conn| {
                let current = bounds(conn)?;
                let at = request.at.unwrap_or(current.revision);
                versioned::check_revision(at, current)?;
                if at < current.compact_revision {
                    return Err(Error::Compacted {
                        compact_revision: current.compact_revision,
                    });
                }
                let (low, high) = prefix_bounds(&request.prefix);
                let sql = format!(
                    "SELECT {VERSION_COLUMNS} FROM state_keys k
                     JOIN state_versions v ON v.key = k.key AND v.revision =
                        (SELECT MAX(revision) FROM state_versions WHERE key = k.key AND revision <= ?1)
                     WHERE k.key >= ?2 AND (?3 IS NULL OR k.key < ?3) AND (?4 IS NULL OR k.key > ?4)
                       AND v.kind = 'put'
                     ORDER BY k.key LIMIT ?5"
                );
                let mut statement = conn.prepare_cached(&sql).map_err(sqlite_error)?;
                let rows = statement
                    .query(params![
                        to_i64(at),
                        low,
                        high,
                        request.after_key.as_ref().map(StorageKey::as_str),
                        i64::from(request.limit) + 1
                    ])
                    .map_err(sqlite_error)?;
                Ok(RangePage::from_rows(at, collect_versions(rows)?, request.limit))
            })
        })
        .await
    }

    async fn key_history(
        &self,
        key: &StorageKey,
        before: Option<u64>,
        limit: u32,
    ) -> Result<KeyHistory> {
        versioned::check_limit(limit)?;
        let key = key.clone();
        let before = before.map_or(i64::MAX, to_i64);
        self.read_blocking(move |conn| {
            snapshot(conn, |conn| {
                let sql = format!(
                    "SELECT {VERSION_COLUMNS} FROM state_versions v
                     WHERE v.key = ?1 AND v.revision < ?2 ORDER BY v.revision DESC LIMIT ?3"
                );
                let mut statement = conn.prepare_cached(&sql).map_err(sqlite_error)?;
                let rows = statement
                    .query(params![key.as_str(), before, i64::from(limit)])
                    .map_err(sqlite_error)?;
                let versions = collect_versions(rows)?;
                let compacted_below = conn
                    .prepare_cached("SELECT trimmed_below FROM state_keys WHERE key = ?1")
                    .and_then(|mut statement| {
                        statement
                            .query_row([key.as_str()], |row| row.get::<_, Option<i64>>(0))
                            .optional()
                    })
                    .map_err(sqlite_error)?
                    .flatten()
                    .map(to_u64);
                Ok(KeyHistory {
                    versions,
                    compacted_below,
                })
            })
        })
        .await
    }

    async fn read_revisions(
        &self,
        prefix: &KeyPrefix,
        after: u64,
        limit: u32,
    ) -> Result<Vec<KeyVersion>> {
        versioned::check_limit(limit)?;
        let (low, high) = prefix_bounds(prefix);
        let work = move |conn: &Connection| {
            // The rows first, then the compaction point: if compaction ran
            // before the rows were read, the point read after shows it.
            // By the revision index: the key range would pick the primary
            // key and walk the whole history of the prefix on every read.
            let sql = format!(
                "SELECT {VERSION_COLUMNS} FROM state_versions v INDEXED BY state_versions_by_revision
                 WHERE v.revision > ?1 AND v.key >= ?2 AND (?3 IS NULL OR v.key < ?3)
                   AND v.revision <= (SELECT MAX(revision) FROM (
                        SELECT revision FROM state_versions INDEXED BY state_versions_by_revision
                        WHERE revision > ?1 AND key >= ?2 AND (?3 IS NULL OR key < ?3)
                        ORDER BY revision LIMIT ?4))
                 ORDER BY v.revision, v.key"
            );
            let mut statement = conn.prepare_cached(&sql).map_err(sqlite_error)?;
            let rows = statement
                .query(params![to_i64(after), low, high, i64::from(limit)])
                .map_err(sqlite_error)?;
            let versions = collect_versions(rows)?;
            let current = bounds(conn)?;
            if after.saturating_add(1) < current.compact_revision {
                return Err(Error::Compacted {
                    compact_revision: current.compact_revision,
                });
            }
            Ok(versions)
        };
        // As event reads: a page up to 1,000 runs on the caller's thread
        // (a caught-up watcher reads a few rows, and a hop to the blocking
        // pool would cost more than the read).
        if limit <= 1000 {
            self.read_inline(work).await
        } else {
            self.read_blocking(work).await
        }
    }

    async fn revision_bounds(&self) -> Result<RevisionBounds> {
        self.read_inline(bounds).await
    }

    async fn revision_before(&self, time: Timestamp) -> Result<Option<u64>> {
        self.read_blocking(move |conn| {
            conn.query_row(
                "SELECT MAX(revision) FROM state_versions WHERE timestamp < ?1",
                [time.as_micros()],
                |row| row.get::<_, Option<i64>>(0),
            )
            .map(|found| found.map(to_u64))
            .map_err(sqlite_error)
        })
        .await
    }

    async fn compact(&self, revision: u64, keep_versions: u32) -> Result<CompactOutcome> {
        if keep_versions == 0 {
            return Err(Error::InvalidRequest {
                reason: versioned::InvalidRequest::BadKeepVersions,
            });
        }
        self.write(move |conn| compact(conn, revision, keep_versions))
            .await
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<Lease> {
        versioned::check_lease_ttl(ttl)?;
        let now = self.clock.now();
        self.write(move |conn| {
            let id: i64 = conn
                .prepare_cached(
                    "UPDATE state_meta SET last_lease = last_lease + 1 WHERE id = 1 RETURNING last_lease",
                )
                .and_then(|mut statement| statement.query_row([], |row| row.get(0)))
                .map_err(sqlite_error)?;
            let lease = Lease {
                id: LeaseId(to_u64(id)),
                ttl,
                expires_at: now.saturating_add(ttl),
            };
            conn.prepare_cached("INSERT INTO state_leases (id, ttl, expires_at) VALUES (?1, ?2, ?3)")
                .and_then(|mut statement| {
                    statement.execute(params![
                        id,
                        to_i64(ttl.as_micros() as u64),
                        lease.expires_at.as_micros()
                    ])
                })
                .map_err(sqlite_error)?;
            Ok(lease)
        })
        .await
    }

    async fn keep_lease_alive(&self, lease: LeaseId) -> Result<Lease> {
        let now = self.clock.now().as_micros();
        self.write(move |conn| {
            conn.prepare_cached(
                "UPDATE state_leases SET expires_at = ?2 + ttl WHERE id = ?1 AND expires_at > ?2
                 RETURNING ttl, expires_at",
            )
            .and_then(|mut statement| {
                statement
                    .query_row(params![to_i64(lease.0), now], |row| {
                        Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?))
                    })
                    .optional()
            })
            .map_err(sqlite_error)?
            .map(|(ttl, expires_at)| Lease {
                id: lease,
                ttl: Duration::from_micros(to_u64(ttl)),
                expires_at: Timestamp::from_micros(expires_at),
            })
            .ok_or(Error::LeaseNotFound { lease })
        })
        .await
    }

    async fn revoke_lease(&self, lease: LeaseId, author: Option<&AgentId>) -> Result<Option<u64>> {
        let (author, now) = (author.cloned(), self.clock.now());
        self.write_versioned(move |conn| revoke(conn, lease, author, now))
            .await
    }

    async fn expire_leases(&self) -> Result<u64> {
        let now = self.clock.now();
        // A read first: with nothing expired, no write is queued.
        let any = self
            .read_inline(move |conn| {
                conn.prepare_cached("SELECT 1 FROM state_leases WHERE expires_at <= ?1 LIMIT 1")
                    .and_then(|mut statement| {
                        statement
                            .query_row([now.as_micros()], |_| Ok(()))
                            .optional()
                    })
                    .map_err(sqlite_error)
            })
            .await?;
        if any.is_none() {
            return Ok(0);
        }
        self.write_versioned(move |conn| {
            let expired: Vec<i64> = {
                let mut statement = conn
                    .prepare_cached(
                        "SELECT id FROM state_leases WHERE expires_at <= ?1 ORDER BY id",
                    )
                    .map_err(sqlite_error)?;
                let rows = statement
                    .query_map([now.as_micros()], |row| row.get(0))
                    .map_err(sqlite_error)?;
                rows.collect::<rusqlite::Result<_>>()
                    .map_err(sqlite_error)?
            };
            for id in &expired {
                revoke(conn, LeaseId(to_u64(*id)), None, now)?;
            }
            Ok(expired.len() as u64)
        })
        .await
    }

    async fn purge_prefix(
        &self,
        prefix: &KeyPrefix,
        author: Option<&AgentId>,
    ) -> Result<PurgeOutcome> {
        if prefix.as_str().is_empty() {
            return Err(Error::InvalidRequest {
                reason: versioned::InvalidRequest::EmptyPrefix,
            });
        }
        let (low, high) = prefix_bounds(prefix);
        // A read first: with nothing under the prefix (most sessions keep no
        // state), no write is queued.
        let probe = (low.clone(), high.clone());
        let any = self
            .read_inline(move |conn| {
                conn.prepare_cached(
                    "SELECT 1 FROM state_versions
                     WHERE key >= ?1 AND key < ?2 AND kind <> 'purged' LIMIT 1",
                )
                .and_then(|mut statement| {
                    statement
                        .query_row(params![probe.0, probe.1], |_| Ok(()))
                        .optional()
                })
                .map_err(sqlite_error)
            })
            .await?;
        if any.is_none() {
            return Ok(PurgeOutcome::default());
        }
        let (author, now) = (author.cloned(), self.clock.now());
        self.write_versioned(move |conn| {
            let live = keys_of(
                conn,
                "SELECT key FROM state_keys WHERE live = 1 AND key >= ?1 AND key < ?2 ORDER BY key",
                params![low, high],
            )?;
            let erased = conn
                .prepare_cached(
                    "UPDATE state_versions SET kind = 'purged', value = NULL
                     WHERE kind = 'put' AND key >= ?1 AND key < ?2",
                )
                .and_then(|mut statement| statement.execute(params![low, high]))
                .map_err(sqlite_error)? as u64;
            let deleted = live.len() as u64;
            let revision = delete_all(conn, live, author, now)?;
            Ok(PurgeOutcome {
                revision,
                deleted,
                erased,
            })
        })
        .await
    }

    async fn wait_for_revision(&self, after: u64, timeout: Duration) -> Result<u64> {
        self.revision_watch
            .wait(after, timeout, || async {
                Ok(self.revision_bounds().await?.revision)
            })
            .await
    }

    async fn versioned_stats(&self) -> Result<VersionedStats> {
        self.read_blocking(|conn| {
            snapshot(conn, |conn| {
                let (keys, versions, value_bytes, leases): (i64, i64, i64, i64) = conn
                    .query_row(
                        "SELECT (SELECT COUNT(*) FROM state_keys WHERE live = 1),
                                (SELECT COUNT(*) FROM state_versions),
                                (SELECT COALESCE(SUM(length(value)), 0) FROM state_versions),
                                (SELECT COUNT(*) FROM state_leases)",
                        [],
                        |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
                    )
                    .map_err(sqlite_error)?;
                Ok(VersionedStats {
                    keys: to_u64(keys),
                    versions: to_u64(versions),
                    value_bytes: to_u64(value_bytes),
                    leases: to_u64(leases),
                    bounds: bounds(conn)?,
                })
            })
        })
        .await
    }
}
