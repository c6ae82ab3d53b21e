//! Storage: one `sqlx::Any` pool over PostgreSQL (production, several
//! replicas on one database) or SQLite (the embedded default, a file in the
//! data folder). Queries are written once with `$N` placeholders, which both
//! drivers accept; the few dialect differences (row locks, how a write
//! transaction begins) live here.
//!
//! Column types are restricted to what `Any` carries the same way on both:
//! BIGINT/INTEGER (times in unix milliseconds, flags 0/1), TEXT (ids, JSON)
//! and BYTEA/BLOB.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{Any, AnyPool, Executor};

/// A transaction on the store.
pub type Tx = sqlx::Transaction<'static, Any>;

/// Which database is behind the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// PostgreSQL: row locks with `FOR UPDATE`, many replicas.
    Postgres,
    /// SQLite: one writer at a time (`BEGIN IMMEDIATE`).
    Sqlite,
}

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The URL names no supported database.
    #[error("unsupported database URL (use postgres:// or sqlite://)")]
    UnsupportedUrl,
    /// Connecting failed.
    #[error("cannot connect to the database: {0}")]
    Connect(#[source] sqlx::Error),
    /// A migration failed.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// The store.
#[derive(Clone, Debug)]
pub struct Db {
    pool: AnyPool,
    dialect: Dialect,
    /// The SQLite database's file (none on PostgreSQL or in memory).
    sqlite_file: Option<PathBuf>,
}

static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");
static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

impl Db {
    /// Connects to `url` and applies the migrations of its dialect.
    /// A SQLite file is created when missing.
    pub async fn connect(url: &str) -> Result<Db, DbError> {
        sqlx::any::install_default_drivers();
        let dialect = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Dialect::Postgres
        } else if url.starts_with("sqlite:") {
            Dialect::Sqlite
        } else {
            return Err(DbError::UnsupportedUrl);
        };
        let url = match dialect {
            Dialect::Sqlite if !url.contains("mode=") => {
                let separator = if url.contains('?') { '&' } else { '?' };
                format!("{url}{separator}mode=rwc")
            }
            _ => url.to_string(),
        };
        let options = AnyConnectOptions::from_str(&url).map_err(DbError::Connect)?;
        let sqlite_file = match dialect {
            Dialect::Sqlite if !url.contains("mode=memory") => {
                let options =
                    sqlx::sqlite::SqliteConnectOptions::from_str(&url).map_err(DbError::Connect)?;
                Some(options.get_filename().to_path_buf())
                    .filter(|file| file.as_os_str() != ":memory:")
            }
            _ => None,
        };
        let pool = match dialect {
            Dialect::Postgres => AnyPoolOptions::new()
                .max_connections(16)
                .acquire_timeout(Duration::from_secs(10)),
            // WAL lets readers run beside the one writer; writers queue on
            // the busy timeout instead of failing. An embedded database's
            // connections do not go stale: no ping before each use.
            Dialect::Sqlite => AnyPoolOptions::new()
                .max_connections(4)
                .acquire_timeout(Duration::from_secs(30))
                .test_before_acquire(false)
                .after_connect(|connection, _| {
                    Box::pin(async move {
                        connection.execute("PRAGMA journal_mode = WAL").await?;
                        connection.execute("PRAGMA busy_timeout = 10000").await?;
                        connection.execute("PRAGMA foreign_keys = ON").await?;
                        connection.execute("PRAGMA synchronous = FULL").await?;
                        Ok(())
                    })
                }),
        }
        .connect_with(options)
        .await
        .map_err(DbError::Connect)?;
        match dialect {
            Dialect::Postgres => POSTGRES_MIGRATIONS.run(&pool).await?,
            Dialect::Sqlite => SQLITE_MIGRATIONS.run(&pool).await?,
        }
        Ok(Db {
            pool,
            dialect,
            sqlite_file,
        })
    }

    /// The pool, for reads outside a transaction.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The dialect.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// The SQLite database's file, for a connection of one's own (the
    /// audit writer's); `None` on PostgreSQL and for an in-memory database.
    pub fn sqlite_file(&self) -> Option<&Path> {
        self.sqlite_file.as_deref()
    }

    /// Begins a write transaction. On SQLite it takes the write lock at
    /// once (`BEGIN IMMEDIATE`), so a transaction that reads and then writes
    /// never fails half-way on a lock upgrade.
    pub async fn begin(&self) -> Result<Tx, sqlx::Error> {
        match self.dialect {
            Dialect::Postgres => self.pool.begin().await,
            Dialect::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
        }
    }

    /// The row-lock suffix of a `SELECT` inside a write transaction:
    /// `FOR UPDATE` on PostgreSQL; nothing on SQLite, where the transaction
    /// already holds the database's write lock.
    pub fn for_update(&self) -> &'static str {
        match self.dialect {
            Dialect::Postgres => " FOR UPDATE",
            Dialect::Sqlite => "",
        }
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Unix time in milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A new random id with a readable prefix (`wal_…`, `req_…`): 16 random
/// bytes, hex.
pub fn new_id(prefix: &str) -> String {
    let mut bytes = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut bytes);
    format!("{prefix}_{}", hex::encode(bytes))
}

/// The 16 random bytes of an id made by [`new_id`].
pub fn id_bytes(id: &str) -> Option<[u8; 16]> {
    let (_, hex_part) = id.split_once('_')?;
    let bytes = hex::decode(hex_part).ok()?;
    bytes.try_into().ok()
}
