//! Versioned records on PostgreSQL.
//!
//! **Revisions.** Every write takes the `state_meta` row's lock first and
//! holds it to its commit, so across every process sharing the database
//! revisions are assigned in commit order, with no gap (a rolled-back
//! transaction never took one: the counter moves in the same transaction).
//! On one node, concurrent transactions go through one [`Committer`]: a
//! batch takes the lock once, reads the heads of every key it touches in
//! one query, plans each transaction in order with the shared planner (each
//! seeing the ones before it), writes all versions and heads in one
//! statement, and commits once.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use smalltalk_types::{AgentId, StorageKey, Timestamp};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};

use super::committer::BatchWork;
use super::{PgStore, pg_error};
use crate::codec::{to_i64, to_u64};
use crate::versioned::{
    self, CompactOutcome, CompareTarget, Head, KeyHistory, KeyPrefix, KeyVersion, Lease, LeaseId,
    PurgeOutcome, RangePage, RangeRequest, RevisionBounds, Txn, TxnOp, TxnResponse, TxnView,
    VersionKind, VersionedStats, VersionedStore,
};
use crate::{Error, Result};

/// The columns of a version row, in this order.
const VERSION_COLUMNS: &str = "v.key, v.kind, v.value, v.revision, v.create_revision, v.version, v.lease, v.author, v.timestamp";

fn decode_version(row: &PgRow) -> Result<KeyVersion> {
    let key: String = row.try_get(0).map_err(pg_error)?;
    let kind: String = row.try_get(1).map_err(pg_error)?;
    let author: Option<String> = row.try_get(7).map_err(pg_error)?;
    Ok(KeyVersion {
        key: StorageKey::parse(&key)?,
        kind: VersionKind::parse(&kind).ok_or_else(|| Error::Backend {
            backend: "postgres",
            source: format!("state version of `{key}` has unknown kind `{kind}`").into(),
        })?,
        value: row.try_get(2).map_err(pg_error)?,
        revision: to_u64(row.try_get(3).map_err(pg_error)?),
        create_revision: to_u64(row.try_get(4).map_err(pg_error)?),
        version: to_u64(row.try_get(5).map_err(pg_error)?),
        lease: row
            .try_get::<Option<i64>, _>(6)
            .map_err(pg_error)?
            .map(|lease| LeaseId(to_u64(lease))),
        author: author.as_deref().map(AgentId::parse).transpose()?,
        timestamp: Timestamp::from_micros(row.try_get(8).map_err(pg_error)?),
    })
}

fn decode_all(rows: &[PgRow]) -> Result<Vec<KeyVersion>> {
    rows.iter().map(decode_version).collect()
}

async fn bounds(conn: &mut PgConnection, lock: bool) -> Result<RevisionBounds> {
    let sql = if lock {
        "SELECT revision, compact_revision FROM state_meta WHERE id = 1 FOR UPDATE"
    } else {
        "SELECT revision, compact_revision FROM state_meta WHERE id = 1"
    };
    let row = sqlx::query(sql)
        .fetch_one(&mut *conn)
        .await
        .map_err(pg_error)?;
    Ok(RevisionBounds {
        revision: to_u64(row.try_get(0).map_err(pg_error)?),
        compact_revision: to_u64(row.try_get(1).map_err(pg_error)?),
    })
}

/// The latest state of the keys a batch touches, updated as each planned
/// transaction writes.
#[derive(Default)]
struct Overlay {
    heads: HashMap<StorageKey, Head>,
    latest: HashMap<StorageKey, KeyVersion>,
    leases: HashSet<LeaseId>,
}

impl TxnView for Overlay {
    fn head(&mut self, key: &StorageKey) -> Result<Option<Head>> {
        Ok(self.heads.get(key).copied())
    }

    fn latest(&mut self, key: &StorageKey) -> Result<Option<KeyVersion>> {
        Ok(self
            .latest
            .get(key)
            .filter(|version| version.is_live())
            .cloned())
    }

    fn lease_exists(&mut self, lease: LeaseId) -> Result<bool> {
        Ok(self.leases.contains(&lease))
    }
}

impl Overlay {
    /// Reads what `txns` need: every key's head, the values compares and
    /// gets need, and the leases puts name.
    async fn load(conn: &mut PgConnection, txns: &[&Txn], now: Timestamp) -> Result<Self> {
        let mut keys = BTreeSet::new();
        let mut valued = BTreeSet::new();
        let mut leases = BTreeSet::new();
        for txn in txns {
            for compare in &txn.compare {
                keys.insert(compare.key.as_str().to_owned());
                if matches!(compare.target, CompareTarget::Value(_)) {
                    valued.insert(compare.key.as_str().to_owned());
                }
            }
            // Without compares the failure branch never runs: its reads
            // need nothing.
            let failure: &[TxnOp] = if txn.compare.is_empty() {
                &[]
            } else {
                &txn.failure
            };
            for op in txn.success.iter().chain(failure) {
                keys.insert(op.key().as_str().to_owned());
                match op {
                    TxnOp::Get { key } => {
                        valued.insert(key.as_str().to_owned());
                    }
                    TxnOp::Put {
                        lease: Some(lease), ..
                    } => {
                        leases.insert(to_i64(lease.0));
                    }
                    _ => {}
                }
            }
        }
        let mut overlay = Overlay::default();
        // One index probe per key: `key = ANY(...)` may be planned as a scan
        // comparing every row with every key.
        let rows = sqlx::query(
            "SELECT k.key, k.live, k.mod_revision, k.create_revision, k.version, k.lease
             FROM UNNEST($1::TEXT[]) AS wanted (key)
             CROSS JOIN LATERAL (SELECT * FROM state_keys WHERE key = wanted.key) k",
        )
        .bind(keys.into_iter().collect::<Vec<_>>())
        .fetch_all(&mut *conn)
        .await
        .map_err(pg_error)?;
        for row in rows {
            let key: String = row.try_get(0).map_err(pg_error)?;
            overlay.heads.insert(
                StorageKey::parse(&key)?,
                Head {
                    live: row.try_get(1).map_err(pg_error)?,
                    mod_revision: to_u64(row.try_get(2).map_err(pg_error)?),
                    create_revision: to_u64(row.try_get(3).map_err(pg_error)?),
                    version: to_u64(row.try_get(4).map_err(pg_error)?),
                    lease: row
                        .try_get::<Option<i64>, _>(5)
                        .map_err(pg_error)?
                        .map(|lease| LeaseId(to_u64(lease))),
                },
            );
        }
        if !valued.is_empty() {
            // Each key's newest version, by the primary key's order (one
            // index probe per key, whatever the table statistics say).
            let rows = sqlx::query(&format!(
                "SELECT {VERSION_COLUMNS} FROM UNNEST($1::TEXT[]) AS wanted (key)
                 CROSS JOIN LATERAL (
                    SELECT * FROM state_versions
                    WHERE key = wanted.key ORDER BY revision DESC LIMIT 1) v
                 WHERE v.kind = 'put'"
            ))
            .bind(valued.into_iter().collect::<Vec<_>>())
            .fetch_all(&mut *conn)
            .await
            .map_err(pg_error)?;
            for version in decode_all(&rows)? {
                overlay.latest.insert(version.key.clone(), version);
            }
        }
        if !leases.is_empty() {
            let ids: Vec<i64> = sqlx::query_scalar(
                "SELECT id FROM state_leases WHERE id = ANY($1) AND expires_at > $2",
            )
            .bind(leases.into_iter().collect::<Vec<_>>())
            .bind(now.as_micros())
            .fetch_all(&mut *conn)
            .await
            .map_err(pg_error)?;
            overlay
                .leases
                .extend(ids.into_iter().map(|id| LeaseId(to_u64(id))));
        }
        Ok(overlay)
    }

    fn record(&mut self, writes: &[KeyVersion]) {
        for version in writes {
            self.heads.insert(version.key.clone(), Head::of(version));
            self.latest.insert(version.key.clone(), version.clone());
        }
    }
}

/// Writes versions (of one or more revisions, in order), the keys' final
/// heads, and the newest revision, in one statement.
async fn apply(conn: &mut PgConnection, writes: &[KeyVersion]) -> Result<()> {
    let Some(last) = writes.last() else {
        return Ok(());
    };
    let mut keys = Vec::with_capacity(writes.len());
    let mut revisions = Vec::with_capacity(writes.len());
    let mut kinds = Vec::with_capacity(writes.len());
    let mut values: Vec<Option<Vec<u8>>> = Vec::with_capacity(writes.len());
    let mut creates = Vec::with_capacity(writes.len());
    let mut versions = Vec::with_capacity(writes.len());
    let mut leases: Vec<Option<i64>> = Vec::with_capacity(writes.len());
    let mut authors: Vec<Option<String>> = Vec::with_capacity(writes.len());
    let mut timestamps = Vec::with_capacity(writes.len());
    for version in writes {
        keys.push(version.key.as_str().to_owned());
        revisions.push(to_i64(version.revision));
        kinds.push(version.kind.as_str().to_owned());
        values.push(version.value.clone());
        creates.push(to_i64(version.create_revision));
        versions.push(to_i64(version.version));
        leases.push(version.lease.map(|lease| to_i64(lease.0)));
        authors.push(
            version
                .author
                .as_ref()
                .map(|author| author.as_str().to_owned()),
        );
        timestamps.push(version.timestamp.as_micros());
    }
    // A key written twice in the batch: its head is its last version.
    let mut final_heads: HashMap<&str, usize> = HashMap::new();
    for (index, version) in writes.iter().enumerate() {
        final_heads.insert(version.key.as_str(), index);
    }
    let mut head_rows: Vec<usize> = final_heads.into_values().collect();
    head_rows.sort_unstable();
    let pick =
        |column: &dyn Fn(usize) -> i64| head_rows.iter().map(|i| column(*i)).collect::<Vec<i64>>();
    let head_keys: Vec<String> = head_rows.iter().map(|i| keys[*i].clone()).collect();
    let head_live: Vec<bool> = head_rows
        .iter()
        .map(|i| writes[*i].kind == VersionKind::Put)
        .collect();
    let head_mod = pick(&|i| revisions[i]);
    let head_create = pick(&|i| creates[i]);
    let head_version = pick(&|i| versions[i]);
    let head_lease: Vec<Option<i64>> = head_rows.iter().map(|i| leases[*i]).collect();
    sqlx::query(
        "WITH ins AS (
            INSERT INTO state_versions (key, revision, kind, value, create_revision, version, lease,
                                        author, timestamp)
            SELECT * FROM UNNEST($1::TEXT[], $2::BIGINT[], $3::TEXT[], $4::BYTEA[], $5::BIGINT[],
                                 $6::BIGINT[], $7::BIGINT[], $8::TEXT[], $9::BIGINT[])),
         heads AS (
            INSERT INTO state_keys (key, live, mod_revision, create_revision, version, lease)
            SELECT * FROM UNNEST($10::TEXT[], $11::BOOLEAN[], $12::BIGINT[], $13::BIGINT[],
                                 $14::BIGINT[], $15::BIGINT[])
            ON CONFLICT (key) DO UPDATE SET live = excluded.live,
                mod_revision = excluded.mod_revision, create_revision = excluded.create_revision,
                version = excluded.version, lease = excluded.lease)
         UPDATE state_meta SET revision = $16 WHERE id = 1",
    )
    .bind(keys)
    .bind(revisions)
    .bind(kinds)
    .bind(values)
    .bind(creates)
    .bind(versions)
    .bind(leases)
    .bind(authors)
    .bind(timestamps)
    .bind(head_keys)
    .bind(head_live)
    .bind(head_mod)
    .bind(head_create)
    .bind(head_version)
    .bind(head_lease)
    .bind(to_i64(last.revision))
    .execute(&mut *conn)
    .await
    .map_err(pg_error)?;
    Ok(())
}

/// Transactions, batched by the committer.
pub(super) struct TxnBatch;

#[async_trait]
impl BatchWork for TxnBatch {
    type Job = (Txn, Timestamp);
    type Output = TxnResponse;

    fn job_bytes((txn, _): &Self::Job) -> usize {
        txn.success
            .iter()
            .chain(&txn.failure)
            .map(|op| match op {
                TxnOp::Put { value, .. } => value.len(),
                _ => 0,
            })
            .sum()
    }

    async fn run(
        &self,
        conn: &mut PgConnection,
        jobs: &[Self::Job],
    ) -> Result<Vec<Result<TxnResponse>>> {
        let mut current = bounds(conn, true).await?.revision;
        let txns: Vec<&Txn> = jobs.iter().map(|(txn, _)| txn).collect();
        let now = jobs
            .iter()
            .map(|(_, now)| *now)
            .max()
            .unwrap_or(Timestamp::EPOCH);
        let mut overlay = Overlay::load(conn, &txns, now).await?;
        let mut writes = Vec::new();
        let mut outcomes = Vec::with_capacity(jobs.len());
        for (txn, timestamp) in jobs {
            match versioned::plan(txn, &mut overlay, current, *timestamp) {
                Ok(planned) => {
                    overlay.record(&planned.writes);
                    current = planned.response.revision.max(current);
                    writes.extend(planned.writes);
                    outcomes.push(Ok(planned.response));
                }
                Err(error) => outcomes.push(Err(error)),
            }
        }
        apply(conn, &writes).await?;
        Ok(outcomes)
    }
}

/// Deletes `keys` (all live) in one revision, in a transaction holding the
/// revision lock; returns it.
async fn delete_all(
    conn: &mut PgConnection,
    keys: Vec<StorageKey>,
    author: Option<&AgentId>,
    now: Timestamp,
) -> Result<Option<u64>> {
    if keys.is_empty() {
        return Ok(None);
    }
    let revision = bounds(conn, false).await?.revision + 1;
    let txn = Txn {
        author: author.cloned(),
        ..Txn::default()
    };
    let writes: Vec<KeyVersion> = keys
        .into_iter()
        .map(|key| versioned::tombstone(key, revision, &txn, now))
        .collect();
    apply(conn, &writes).await?;
    Ok(Some(revision))
}

fn keys_of(rows: Vec<String>) -> Result<Vec<StorageKey>> {
    rows.iter()
        .map(|key| StorageKey::parse(key).map_err(Error::from))
        .collect()
}

/// Revokes `lease` (only if expired by `expired_at`: a keep-alive that
/// committed meanwhile wins).
async fn revoke(
    conn: &mut PgConnection,
    lease: LeaseId,
    author: Option<&AgentId>,
    now: Timestamp,
    expired_at: Option<Timestamp>,
) -> Result<Option<u64>> {
    let removed = sqlx::query(
        "DELETE FROM state_leases WHERE id = $1 AND ($2::BIGINT IS NULL OR expires_at <= $2)",
    )
    .bind(to_i64(lease.0))
    .bind(expired_at.map(Timestamp::as_micros))
    .execute(&mut *conn)
    .await
    .map_err(pg_error)?
    .rows_affected();
    if removed == 0 {
        return Err(Error::LeaseNotFound { lease });
    }
    let keys: Vec<String> =
        sqlx::query_scalar("SELECT key FROM state_keys WHERE lease = $1 AND live ORDER BY key")
            .bind(to_i64(lease.0))
            .fetch_all(&mut *conn)
            .await
            .map_err(pg_error)?;
    delete_all(conn, keys_of(keys)?, author, now).await
}

fn compacted(bounds: RevisionBounds) -> Error {
    Error::Compacted {
        compact_revision: bounds.compact_revision,
    }
}

/// Work on a connection of an open transaction.
type ConnWork<'c, T> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<T>> + Send + 'c>>;

impl PgStore {
    /// Runs `work` in a transaction holding the revision lock, and wakes
    /// revision waiters after the commit.
    async fn write_locked<T, F>(&self, work: F) -> Result<T>
    where
        F: for<'c> FnOnce(&'c mut PgConnection) -> ConnWork<'c, T>,
    {
        let mut tx = self.pool.begin().await.map_err(pg_error)?;
        bounds(&mut tx, true).await?;
        let value = work(&mut tx).await?;
        let revision = bounds(&mut tx, false).await?.revision;
        tx.commit().await.map_err(pg_error)?;
        self.revision_watch.advance(revision);
        Ok(value)
    }

    /// Runs a read of several statements on one snapshot.
    async fn read_snapshot<T, F>(&self, work: F) -> Result<T>
    where
        F: for<'c> FnOnce(&'c mut PgConnection) -> ConnWork<'c, T>,
    {
        let mut tx = self.pool.begin().await.map_err(pg_error)?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(&mut *tx)
            .await
            .map_err(pg_error)?;
        let value = work(&mut tx).await?;
        tx.commit().await.map_err(pg_error)?;
        Ok(value)
    }
}

#[async_trait]
impl VersionedStore for PgStore {
    async fn txn(&self, txn: &Txn) -> Result<TxnResponse> {
        txn.validate()?;
        let response = self
            .state_committer
            .submit((txn.clone(), self.clock.now()))
            .await?;
        self.revision_watch.advance(response.revision);
        Ok(response)
    }

    async fn get_version(&self, key: &StorageKey, at: Option<u64>) -> Result<Option<KeyVersion>> {
        let key = key.as_str().to_owned();
        self.read_snapshot(move |conn| {
            Box::pin(async move {
                let current = bounds(conn, false).await?;
                let at_revision = at.unwrap_or(current.revision);
                versioned::check_revision(at_revision, current)?;
                let row = sqlx::query(&format!(
                    "SELECT {VERSION_COLUMNS} FROM state_versions v
                     WHERE v.key = $1 AND v.revision <= $2 ORDER BY v.revision DESC LIMIT 1"
                ))
                .bind(&key)
                .bind(to_i64(at_revision))
                .fetch_optional(&mut *conn)
                .await
                .map_err(pg_error)?;
                let found = row.as_ref().map(decode_version).transpose()?;
                if found.is_none() && at_revision < current.compact_revision {
                    return Err(compacted(current));
                }
                Ok(found.filter(|version| version.kind != VersionKind::Delete))
            })
        })
        .await
    }

    async fn range(&self, request: &RangeRequest) -> Result<RangePage> {
        versioned::check_limit(request.limit)?;
        let request = request.clone();
        self.read_snapshot(move |conn| {
            Box::pin(async move {
                let current = bounds(conn, false).await?;
                let at = request.at.unwrap_or(current.revision);
                versioned::check_revision(at, current)?;
                if at < current.compact_revision {
                    return Err(compacted(current));
                }
                let rows = sqlx::query(&format!(
                    "SELECT {VERSION_COLUMNS} FROM state_keys k
                     JOIN LATERAL (SELECT * FROM state_versions
                                   WHERE key = k.key AND revision <= $1
                                   ORDER BY revision DESC LIMIT 1) v ON true
                     WHERE k.key >= $2 AND ($3::TEXT IS NULL OR k.key < $3)
                       AND ($4::TEXT IS NULL OR k.key > $4) AND v.kind = 'put'
                     ORDER BY k.key LIMIT $5"
                ))
                .bind(to_i64(at))
                .bind(request.prefix.as_str())
                .bind(request.prefix.upper_bound())
                .bind(request.after_key.as_ref().map(StorageKey::as_str))
                .bind(i64::from(request.limit) + 1)
                .fetch_all(&mut *conn)
                .await
                .map_err(pg_error)?;
                Ok(RangePage::from_rows(at, decode_all(&rows)?, request.limit))
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
        let key = key.as_str().to_owned();
        let before = before.map_or(i64::MAX, to_i64);
        self.read_snapshot(move |conn| {
            Box::pin(async move {
                let rows = sqlx::query(&format!(
                    "SELECT {VERSION_COLUMNS} FROM state_versions v
                     WHERE v.key = $1 AND v.revision < $2 ORDER BY v.revision DESC LIMIT $3"
                ))
                .bind(&key)
                .bind(before)
                .bind(i64::from(limit))
                .fetch_all(&mut *conn)
                .await
                .map_err(pg_error)?;
                let compacted_below: Option<Option<i64>> =
                    sqlx::query_scalar("SELECT trimmed_below FROM state_keys WHERE key = $1")
                        .bind(&key)
                        .fetch_optional(&mut *conn)
                        .await
                        .map_err(pg_error)?;
                Ok(KeyHistory {
                    versions: decode_all(&rows)?,
                    compacted_below: compacted_below.flatten().map(to_u64),
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
        // The rows first, then the compaction point: if compaction ran
        // before the rows were read, the point read after shows it.
        let rows = sqlx::query(&format!(
            "SELECT {VERSION_COLUMNS} FROM state_versions v
             WHERE v.revision > $1 AND v.key >= $2 AND ($3::TEXT IS NULL OR v.key < $3)
               AND v.revision <= (SELECT MAX(revision) FROM (
                    SELECT revision FROM state_versions
                    WHERE revision > $1 AND key >= $2 AND ($3::TEXT IS NULL OR key < $3)
                    ORDER BY revision LIMIT $4) first_rows)
             ORDER BY v.revision, v.key"
        ))
        .bind(to_i64(after))
        .bind(prefix.as_str())
        .bind(prefix.upper_bound())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(pg_error)?;
        let versions = decode_all(&rows)?;
        let current = self.revision_bounds().await?;
        if after.saturating_add(1) < current.compact_revision {
            return Err(compacted(current));
        }
        Ok(versions)
    }

    async fn revision_bounds(&self) -> Result<RevisionBounds> {
        let mut conn = self.pool.acquire().await.map_err(pg_error)?;
        bounds(&mut conn, false).await
    }

    async fn revision_before(&self, time: Timestamp) -> Result<Option<u64>> {
        let found: Option<i64> =
            sqlx::query_scalar("SELECT MAX(revision) FROM state_versions WHERE timestamp < $1")
                .bind(time.as_micros())
                .fetch_one(&self.pool)
                .await
                .map_err(pg_error)?;
        Ok(found.map(to_u64))
    }

    async fn compact(&self, revision: u64, keep_versions: u32) -> Result<CompactOutcome> {
        if keep_versions == 0 {
            return Err(Error::InvalidRequest {
                reason: versioned::InvalidRequest::BadKeepVersions,
            });
        }
        self.write_locked(move |conn| {
            Box::pin(async move {
                let current = bounds(conn, false).await?;
                versioned::check_revision(revision, current)?;
                let point = to_i64(current.compact_revision.max(revision));
                let whole = sqlx::query(
                    "WITH gone AS (
                        DELETE FROM state_keys WHERE NOT live AND mod_revision < $1 RETURNING key)
                     DELETE FROM state_versions WHERE key IN (SELECT key FROM gone)",
                )
                .bind(point)
                .execute(&mut *conn)
                .await
                .map_err(pg_error)?
                .rows_affected();
                let trimmed: Vec<String> = sqlx::query_scalar(
                    "DELETE FROM state_versions d USING (
                        SELECT key, revision FROM (
                            SELECT key, revision,
                                   ROW_NUMBER() OVER (PARTITION BY key ORDER BY revision DESC) AS newest,
                                   MAX(CASE WHEN revision <= $1 THEN revision END)
                                       OVER (PARTITION BY key) AS at_point
                            FROM state_versions
                            WHERE key IN (SELECT key FROM state_versions WHERE revision < $1)
                        ) ranked
                        WHERE newest > $2 AND revision < $1 AND revision <> at_point
                     ) doomed
                     WHERE d.key = doomed.key AND d.revision = doomed.revision
                     RETURNING d.key",
                )
                .bind(point)
                .bind(i64::from(keep_versions))
                .fetch_all(&mut *conn)
                .await
                .map_err(pg_error)?;
                let removed = whole + trimmed.len() as u64;
                let distinct: Vec<String> = trimmed
                    .into_iter()
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                sqlx::query(
                    "UPDATE state_keys k SET trimmed_below =
                        (SELECT MIN(revision) FROM state_versions WHERE key = k.key)
                     WHERE k.key = ANY($1)",
                )
                .bind(distinct)
                .execute(&mut *conn)
                .await
                .map_err(pg_error)?;
                sqlx::query("UPDATE state_meta SET compact_revision = $1 WHERE id = 1")
                    .bind(point)
                    .execute(&mut *conn)
                    .await
                    .map_err(pg_error)?;
                Ok(CompactOutcome {
                    compact_revision: to_u64(point),
                    removed,
                })
            })
        })
        .await
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<Lease> {
        versioned::check_lease_ttl(ttl)?;
        let now = self.clock.now();
        let id: i64 = sqlx::query_scalar(
            "WITH next AS (
                UPDATE state_meta SET last_lease = last_lease + 1 WHERE id = 1 RETURNING last_lease)
             INSERT INTO state_leases (id, ttl, expires_at)
             SELECT last_lease, $1, $2 FROM next RETURNING id",
        )
        .bind(to_i64(ttl.as_micros() as u64))
        .bind(now.saturating_add(ttl).as_micros())
        .fetch_one(&self.pool)
        .await
        .map_err(pg_error)?;
        Ok(Lease {
            id: LeaseId(to_u64(id)),
            ttl,
            expires_at: now.saturating_add(ttl),
        })
    }

    async fn keep_lease_alive(&self, lease: LeaseId) -> Result<Lease> {
        let now = self.clock.now().as_micros();
        let row = sqlx::query(
            "UPDATE state_leases SET expires_at = $2 + ttl WHERE id = $1 AND expires_at > $2
             RETURNING ttl, expires_at",
        )
        .bind(to_i64(lease.0))
        .bind(now)
        .fetch_optional(&self.pool)
        .await
        .map_err(pg_error)?
        .ok_or(Error::LeaseNotFound { lease })?;
        Ok(Lease {
            id: lease,
            ttl: Duration::from_micros(to_u64(row.try_get(0).map_err(pg_error)?)),
            expires_at: Timestamp::from_micros(row.try_get(1).map_err(pg_error)?),
        })
    }

    async fn revoke_lease(&self, lease: LeaseId, author: Option<&AgentId>) -> Result<Option<u64>> {
        let (author, now) = (author.cloned(), self.clock.now());
        self.write_locked(move |conn| {
            Box::pin(async move { revoke(conn, lease, author.as_ref(), now, None).await })
        })
        .await
    }

    async fn expire_leases(&self) -> Result<u64> {
        let now = self.clock.now();
        // A read first: with nothing expired, the revision lock is not taken.
        let any: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM state_leases WHERE expires_at <= $1 LIMIT 1")
                .bind(now.as_micros())
                .fetch_optional(&self.pool)
                .await
                .map_err(pg_error)?;
        if any.is_none() {
            return Ok(0);
        }
        self.write_locked(move |conn| {
            Box::pin(async move {
                let expired: Vec<i64> = sqlx::query_scalar(
                    "SELECT id FROM state_leases WHERE expires_at <= $1 ORDER BY id",
                )
                .bind(now.as_micros())
                .fetch_all(&mut *conn)
                .await
                .map_err(pg_error)?;
                let mut revoked = 0;
                for id in &expired {
                    match revoke(conn, LeaseId(to_u64(*id)), None, now, Some(now)).await {
                        Ok(_) => revoked += 1,
                        // Kept alive meanwhile.
                        Err(Error::LeaseNotFound { .. }) => {}
                        Err(error) => return Err(error),
                    }
                }
                Ok(revoked)
            })
        })
        .await
    }

    async fn purge_prefix(
        &self,
        prefix: &KeyPrefix,
        author: Option<&AgentId>,
    ) -> Result<PurgeOutcome> {
        let Some(high) = prefix.upper_bound() else {
            return Err(Error::InvalidRequest {
                reason: versioned::InvalidRequest::EmptyPrefix,
            });
        };
        let low = prefix.as_str().to_owned();
        // A read first: with nothing under the prefix (most sessions keep no
        // state), the revision lock is not taken.
        let any: Option<i32> = sqlx::query_scalar(
            "SELECT 1 FROM state_versions WHERE key >= $1 AND key < $2 AND kind <> 'purged' LIMIT 1",
        )
        .bind(&low)
        .bind(&high)
        .fetch_optional(&self.pool)
        .await
        .map_err(pg_error)?;
        if any.is_none() {
            return Ok(PurgeOutcome::default());
        }
        let (author, now) = (author.cloned(), self.clock.now());
        self.write_locked(move |conn| {
            Box::pin(async move {
                let live: Vec<String> = sqlx::query_scalar(
                    "SELECT key FROM state_keys WHERE live AND key >= $1 AND key < $2 ORDER BY key",
                )
                .bind(&low)
                .bind(&high)
                .fetch_all(&mut *conn)
                .await
                .map_err(pg_error)?;
                let erased = sqlx::query(
                    "UPDATE state_versions SET kind = 'purged', value = NULL
                     WHERE kind = 'put' AND key >= $1 AND key < $2",
                )
                .bind(&low)
                .bind(&high)
                .execute(&mut *conn)
                .await
                .map_err(pg_error)?
                .rows_affected();
                let deleted = live.len() as u64;
                let revision = delete_all(conn, keys_of(live)?, author.as_ref(), now).await?;
                Ok(PurgeOutcome {
                    revision,
                    deleted,
                    erased,
                })
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
        self.read_snapshot(|conn| {
            Box::pin(async move {
                let row = sqlx::query(
                    "SELECT (SELECT COUNT(*) FROM state_keys WHERE live),
                            (SELECT COUNT(*) FROM state_versions),
                            (SELECT COALESCE(SUM(length(value)), 0)::BIGINT FROM state_versions),
                            (SELECT COUNT(*) FROM state_leases)",
                )
                .fetch_one(&mut *conn)
                .await
                .map_err(pg_error)?;
                let count = |index: usize| -> Result<u64> {
                    Ok(to_u64(row.try_get(index).map_err(pg_error)?))
                };
                Ok(VersionedStats {
                    keys: count(0)?,
                    versions: count(1)?,
                    value_bytes: count(2)?,
                    leases: count(3)?,
                    bounds: bounds(conn, false).await?,
                })
            })
        })
        .await
    }
}
