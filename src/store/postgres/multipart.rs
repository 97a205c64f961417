//! The multipart uploads in PostgreSQL ([`MultipartStore`] for nodes sharing a database,
//! tables of migration 7). The database decides every race: recording a part is one
//! statement that raises the upload's part count only where the upload id is still
//! current and the count is the part's number minus one, and inserts the part with it,
//! so of two nodes recording the same part the row lock lets one in and the other finds
//! the count moved on (`false`). Beginning an upload locks the request's record row, so
//! that it serialises with the record's delete (which takes the uploads along, ON DELETE
//! CASCADE) and with another begin.

use sqlx::postgres::PgRow;
use sqlx::Row;
use time::OffsetDateTime;

use super::{query, PgStore, PgStoreError};
use crate::store::multipart::{
    check_begin, check_part, Multipart, MultipartError, MultipartStore, Object, Part,
};
use crate::store::{Operation, StoreError};

/// An upload's columns and its parts, in number order, as three arrays read in the same
/// statement (one snapshot: never an upload with half of a part).
const SELECT: &str = "SELECT u.request_id::text AS request_id, u.object, u.upload_id, u.key, \
    u.started, u.parts, \
    ARRAY(SELECT p.number FROM multipart_parts p \
      WHERE p.request_id = u.request_id AND p.object = u.object ORDER BY p.number) AS numbers, \
    ARRAY(SELECT p.etag FROM multipart_parts p \
      WHERE p.request_id = u.request_id AND p.object = u.object ORDER BY p.number) AS etags, \
    ARRAY(SELECT p.size FROM multipart_parts p \
      WHERE p.request_id = u.request_id AND p.object = u.object ORDER BY p.number) AS sizes \
    FROM multipart_uploads u";

const WHERE_CURRENT: &str = "WHERE u.request_id = $1::numeric AND u.object = $2";

fn upload_from(row: &PgRow) -> Result<(u64, Object, Multipart), PgStoreError> {
    let raw_id: String = row.try_get("request_id")?;
    let corrupt = |why: String| PgStoreError::Corrupt {
        id: raw_id.clone(),
        why: format!("its multipart upload: {why}"),
    };
    let id = raw_id
        .parse::<u64>()
        .map_err(|_| corrupt("the id is not a request id".into()))?;
    let object: String = row.try_get("object")?;
    let object =
        Object::parse(&object).ok_or_else(|| corrupt(format!("unknown object {object:?}")))?;
    let numbers: Vec<i32> = row.try_get("numbers")?;
    let etags: Vec<String> = row.try_get("etags")?;
    let sizes: Vec<i64> = row.try_get("sizes")?;
    let count: i32 = row.try_get("parts")?;
    let parts = numbers
        .into_iter()
        .zip(etags)
        .zip(sizes)
        .map(|((number, etag), size)| {
            Ok(Part {
                number: u32::try_from(number)
                    .map_err(|_| corrupt(format!("part number {number}")))?,
                etag,
                size: u64::try_from(size).map_err(|_| corrupt(format!("part size {size}")))?,
            })
        })
        .collect::<Result<Vec<Part>, PgStoreError>>()?;
    let upload = Multipart {
        upload_id: row.try_get("upload_id")?,
        key: row.try_get("key")?,
        started: row.try_get::<OffsetDateTime, _>("started")?,
        parts,
    };
    upload.check().map_err(&corrupt)?;
    if usize::try_from(count).ok() != Some(upload.parts.len()) {
        return Err(corrupt(format!(
            "counts {count} parts, holds {}",
            upload.parts.len()
        )));
    }
    Ok((id, object, upload))
}

impl PgStore {
    async fn read_multipart(
        &self,
        id: u64,
        object: Object,
    ) -> Result<Option<Multipart>, PgStoreError> {
        let sql = format!("{SELECT} {WHERE_CURRENT}");
        let row = query(&sql)
            .bind(id.to_string())
            .bind(object.as_str())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row
            .as_ref()
            .map(upload_from)
            .transpose()?
            .map(|(_, _, m)| m))
    }

    /// `Ok(None)` from the outer result: the request has no record.
    async fn begin(
        &self,
        id: u64,
        object: Object,
        key: &str,
        upload_id: &str,
    ) -> Result<Option<Option<Multipart>>, PgStoreError> {
        let mut tx = self.pool.begin().await?;
        let request = id.to_string();
        // Held to the commit: the record's delete (FOR UPDATE) and another begin wait here,
        // and a record already gone is refused instead of leaving an orphan upload.
        let record = query("SELECT 1 FROM records WHERE id = $1::numeric FOR NO KEY UPDATE")
            .bind(&request)
            .fetch_optional(&mut *tx)
            .await?;
        if record.is_none() {
            return Ok(None);
        }
        // Waits for a part being recorded to commit; then a fresh statement (a fresh
        // snapshot) reads the upload with that part.
        query("SELECT 1 FROM multipart_uploads u WHERE u.request_id = $1::numeric AND u.object = $2 FOR UPDATE")
            .bind(&request)
            .bind(object.as_str())
            .execute(&mut *tx)
            .await?;
        let sql = format!("{SELECT} {WHERE_CURRENT}");
        let replaced = query(&sql)
            .bind(&request)
            .bind(object.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        let replaced = replaced.as_ref().map(upload_from).transpose()?;
        // Its parts go with it (ON DELETE CASCADE).
        query("DELETE FROM multipart_uploads WHERE request_id = $1::numeric AND object = $2")
            .bind(&request)
            .bind(object.as_str())
            .execute(&mut *tx)
            .await?;
        query(
            "INSERT INTO multipart_uploads (request_id, object, upload_id, key) \
             VALUES ($1::numeric, $2, $3, $4)",
        )
        .bind(&request)
        .bind(object.as_str())
        .bind(upload_id)
        .bind(key)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(replaced.map(|(_, _, m)| m)))
    }

    async fn record_part(
        &self,
        id: u64,
        object: Object,
        upload_id: &str,
        part: &Part,
    ) -> Result<bool, PgStoreError> {
        // One statement, so one transaction: the UPDATE's row lock orders two nodes
        // recording at once, and the one that comes second re-checks `parts` on the row
        // the first committed, finds it moved on, and inserts nothing.
        let done = query(
            "WITH counted AS (UPDATE multipart_uploads SET parts = parts + 1 \
               WHERE request_id = $1::numeric AND object = $2 AND upload_id = $3 \
                 AND parts = $4 - 1 \
               RETURNING request_id, object, upload_id) \
             INSERT INTO multipart_parts (request_id, object, upload_id, number, etag, size) \
             SELECT request_id, object, upload_id, $4, $5, $6 FROM counted",
        )
        .bind(id.to_string())
        .bind(object.as_str())
        .bind(upload_id)
        // At most MAX_PARTS and MAX_PART_SIZE (checked), so within i32 and i64.
        .bind(i32::try_from(part.number).unwrap_or(i32::MAX))
        .bind(&part.etag)
        .bind(i64::try_from(part.size).unwrap_or(i64::MAX))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn end(&self, id: u64, object: Object, upload_id: &str) -> Result<bool, PgStoreError> {
        let done = query(
            "DELETE FROM multipart_uploads \
             WHERE request_id = $1::numeric AND object = $2 AND upload_id = $3",
        )
        .bind(id.to_string())
        .bind(object.as_str())
        .bind(upload_id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn read_multiparts(&self) -> Result<Vec<(u64, Object, Multipart)>, PgStoreError> {
        let rows = query(SELECT).fetch_all(&self.pool).await?;
        let mut all = rows
            .iter()
            .map(upload_from)
            .collect::<Result<Vec<_>, PgStoreError>>()?;
        // By id, then object as `Object` orders them (not as their names sort).
        all.sort_by_key(|(id, object, _)| (*id, *object));
        Ok(all)
    }
}

#[async_trait::async_trait]
impl MultipartStore for PgStore {
    async fn multipart(&self, id: u64, object: Object) -> Result<Option<Multipart>, StoreError> {
        let read = self.read_multipart(id, object).await;
        Ok(self.counted(Operation::Read, read)?)
    }

    async fn begin_multipart(
        &self,
        id: u64,
        object: Object,
        key: &str,
        upload_id: &str,
    ) -> Result<Option<Multipart>, StoreError> {
        check_begin(key, upload_id)?;
        let begun = self.begin(id, object, key, upload_id).await;
        self.counted(Operation::Update, begun)?
            .ok_or_else(|| MultipartError::NoRequest(id).into())
    }

    async fn add_part(
        &self,
        id: u64,
        object: Object,
        upload_id: &str,
        part: &Part,
    ) -> Result<bool, StoreError> {
        check_part(part)?;
        let recorded = self.record_part(id, object, upload_id, part).await;
        Ok(self.counted(Operation::Update, recorded)?)
    }

    async fn end_multipart(
        &self,
        id: u64,
        object: Object,
        upload_id: &str,
    ) -> Result<bool, StoreError> {
        let ended = self.end(id, object, upload_id).await;
        Ok(self.counted(Operation::Update, ended)?)
    }

    async fn multiparts(&self) -> Result<Vec<(u64, Object, Multipart)>, StoreError> {
        let read = self.read_multiparts().await;
        Ok(self.counted(Operation::Read, read)?)
    }
}
