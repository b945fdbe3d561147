//! What differs between the two databases, and the small statement API the SQL is written in.
//!
//! Every statement is written once, in code generic over a [`Dialect`]: sqlx's SQLite driver reads
//! `$N` placeholders as argument N, so the same text runs on both. What differs is the sqlx
//! database, how a UUID is stored (native `uuid` on PostgreSQL, hyphenated `TEXT` on SQLite), how
//! a transaction that writes begins, and whether writes take turns in this process.
//!
//! Generic sqlx code needs a long list of bounds at every use (that each bound type encodes for the
//! database, that a connection executes…), and Rust does not carry such bounds with a trait. So the
//! bounds are stated here once: [`Param`] and [`Column`] name the Rust types a statement binds and
//! reads, checked against both databases; [`Dialect`]'s two implementations bind them (concretely,
//! where sqlx's bounds hold); [`Run`] runs statements for any database sqlx can run them on. Code
//! generic over `D: Dialect` then needs no other bound.

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;

use chrono::{DateTime, Utc};
use sqlx::decode::Decode;
use sqlx::encode::Encode;
use sqlx::postgres::{PgQueryResult, PgRow};
use sqlx::query_builder::Separated;
use sqlx::sqlite::{SqliteQueryResult, SqliteRow};
use sqlx::types::{Json, Type};
use sqlx::{Database, Executor, IntoArguments, Pool, Postgres, Row, Sqlite, Transaction};
use uuid::Uuid;
use uuid::fmt::Hyphenated;

use crate::migrations::Flavour;

/// sqlx's query type for a database, as every statement here has it.
pub(crate) type Query<'q, DB> = sqlx::query::Query<'q, DB, <DB as Database>::Arguments>;

/// A row of the dialect's database.
pub(crate) type RowOf<D> = <<D as Dialect>::Db as Database>::Row;

/// A transaction of the dialect's database.
pub(crate) type Tx<D> = Transaction<'static, <D as Dialect>::Db>;

/// What sqlx's executors return (the same type as `futures_core::future::BoxFuture`).
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A database as the SQL code sees it.
pub(crate) trait Dialect: Debug + Send + Sync + Sized + 'static {
    type Db: Run<Row: Columns, QueryResult: RowsAffected>;

    /// The name [`crate::Admin::backend`] reports.
    const BACKEND: &'static str;
    /// Which set of migrations builds its schema.
    const FLAVOUR: Flavour;
    /// The statement that begins a transaction that writes.
    const BEGIN_WRITE: &'static str;
    /// Whether the database allows one writer at a time, so that writes take turns in this process
    /// (see `SqlStore::write_turn`).
    const ONE_WRITER: bool;
    /// Whether the pool pings a connection before handing it out, to replace one the server dropped.
    /// Every connection is also pinged when it is returned.
    const TEST_BEFORE_ACQUIRE: bool;

    fn bind<'q, 't, T: Param<'t>>(query: Query<'q, Self::Db>, value: T) -> Query<'q, Self::Db>;
    /// Binds a UUID as this database stores it.
    fn bind_id(query: Query<'_, Self::Db>, id: Uuid) -> Query<'_, Self::Db>;
    fn bind_opt_id(query: Query<'_, Self::Db>, id: Option<Uuid>) -> Query<'_, Self::Db>;
    /// [`Self::bind`] for a row of a multi-row `INSERT` built with sqlx's `QueryBuilder`.
    fn push_bind<'t, T: Param<'t>>(row: &mut Separated<'_, Self::Db, &'static str>, value: T);
    /// [`Self::bind_id`] for a row of a multi-row `INSERT`.
    fn push_id(row: &mut Separated<'_, Self::Db, &'static str>, id: Uuid);

    /// A statement to bind and run.
    fn sql(sql: &'static str) -> Stmt<'static, Self> {
        Stmt(sqlx::query(sql))
    }
}

/// PostgreSQL: native UUIDs, row locks (writers need no turns).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pg;

impl Dialect for Pg {
    type Db = Postgres;

    const BACKEND: &'static str = "postgres";
    const FLAVOUR: Flavour = Flavour::Postgres;
    const BEGIN_WRITE: &'static str = "BEGIN";
    // Row locks: concurrent writers need no turns.
    const ONE_WRITER: bool = false;
    // A PostgreSQL connection can die while idle (server restart, proxy timeout): test it first.
    const TEST_BEFORE_ACQUIRE: bool = true;

    fn bind<'q, 't, T: Param<'t>>(query: Query<'q, Postgres>, value: T) -> Query<'q, Postgres> {
        query.bind(value)
    }
    fn bind_id(query: Query<'_, Postgres>, id: Uuid) -> Query<'_, Postgres> {
        query.bind(id)
    }
    fn bind_opt_id(query: Query<'_, Postgres>, id: Option<Uuid>) -> Query<'_, Postgres> {
        query.bind(id)
    }
    fn push_bind<'t, T: Param<'t>>(row: &mut Separated<'_, Postgres, &'static str>, value: T) {
        row.push_bind(value);
    }
    fn push_id(row: &mut Separated<'_, Postgres, &'static str>, id: Uuid) {
        row.push_bind(id);
    }
}

/// SQLite: UUIDs as hyphenated text, so rows stay readable with the sqlite3 shell and sort in
/// UUIDv7 time order; one writer at a time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lite;

impl Dialect for Lite {
    type Db = Sqlite;

    const BACKEND: &'static str = "sqlite";
    const FLAVOUR: Flavour = Flavour::Sqlite;
    // A deferred SQLite transaction that reads and then writes fails at once with "database is locked"
    // when another connection wrote in between (the busy timeout does not apply to that upgrade).
    // Taking the write lock up front makes writers queue on the busy timeout instead.
    const BEGIN_WRITE: &'static str = "BEGIN IMMEDIATE";
    // One writer at a time: take turns in the process rather than in the busy handler.
    const ONE_WRITER: bool = true;
    // An SQLite connection is a file handle in this process, driven by its own worker thread; it
    // cannot be dropped by a server, so the ping before each acquire (a round trip to that thread
    // on every query) buys nothing. The ping on release still runs.
    const TEST_BEFORE_ACQUIRE: bool = false;

    fn bind<'q, 't, T: Param<'t>>(query: Query<'q, Sqlite>, value: T) -> Query<'q, Sqlite> {
        query.bind(value)
    }
    fn bind_id(query: Query<'_, Sqlite>, id: Uuid) -> Query<'_, Sqlite> {
        query.bind(id.hyphenated())
    }
    fn bind_opt_id(query: Query<'_, Sqlite>, id: Option<Uuid>) -> Query<'_, Sqlite> {
        query.bind(id.map(Uuid::hyphenated))
    }
    fn push_bind<'t, T: Param<'t>>(row: &mut Separated<'_, Sqlite, &'static str>, value: T) {
        row.push_bind(value);
    }
    fn push_id(row: &mut Separated<'_, Sqlite, &'static str>, id: Uuid) {
        row.push_bind(id.hyphenated());
    }
}

/// A value a statement binds, encoded alike by both databases. Implemented for the types the SQL
/// code binds, and not for [`Uuid`], whose encoding differs: ids go through [`Stmt::id`].
pub(crate) trait Param<'a>:
    Encode<'a, Postgres> + Type<Postgres> + Encode<'a, Sqlite> + Type<Sqlite>
{
}

/// A value a statement reads, decoded alike by both databases (not [`Uuid`]: see [`Columns::id`]).
pub(crate) trait Column:
    for<'r> Decode<'r, Postgres> + Type<Postgres> + for<'r> Decode<'r, Sqlite> + Type<Sqlite>
{
}

/// Implements a marker trait (no items) for each of a list of types.
macro_rules! mark {
    ($trait:ident<'a> for $($t:ty),* $(,)?) => {
        $(impl<'a> $trait<'a> for $t {})*
    };
    ($trait:ident for $($t:ty),* $(,)?) => {
        $(impl $trait for $t {})*
    };
}

mark!(Param<'a> for
    bool, i32, i64, String, DateTime<Utc>, &'a str, &'a String, &'a [u8], &'a Vec<u8>,
    Json<&'a serde_json::Value>, Option<i32>, Option<i64>, Option<bool>, Option<&'a str>,
    &'a Option<String>, Option<DateTime<Utc>>, Option<Json<&'a serde_json::Value>>,
);
mark!(Column for
    bool, i32, i64, String, DateTime<Utc>, Vec<u8>, Json<serde_json::Value>, Option<i32>,
    Option<i64>, Option<bool>, Option<String>, Option<DateTime<Utc>>,
    Option<Json<serde_json::Value>>,
);

/// Reading a row's columns by name.
pub(crate) trait Columns {
    fn col<T: Column>(&self, name: &str) -> Result<T, sqlx::Error>;
    /// A UUID column, as the database stores it.
    fn id(&self, name: &str) -> Result<Uuid, sqlx::Error>;
}

impl Columns for PgRow {
    fn col<T: Column>(&self, name: &str) -> Result<T, sqlx::Error> {
        self.try_get(name)
    }
    fn id(&self, name: &str) -> Result<Uuid, sqlx::Error> {
        self.try_get(name)
    }
}

impl Columns for SqliteRow {
    fn col<T: Column>(&self, name: &str) -> Result<T, sqlx::Error> {
        self.try_get(name)
    }
    fn id(&self, name: &str) -> Result<Uuid, sqlx::Error> {
        self.try_get::<Hyphenated, _>(name)
            .map(Hyphenated::into_uuid)
    }
}

/// How many rows a statement changed.
pub(crate) trait RowsAffected {
    fn rows_affected(&self) -> u64;
}

impl RowsAffected for PgQueryResult {
    fn rows_affected(&self) -> u64 {
        PgQueryResult::rows_affected(self)
    }
}

impl RowsAffected for SqliteQueryResult {
    fn rows_affected(&self) -> u64 {
        SqliteQueryResult::rows_affected(self)
    }
}

/// Where a statement runs: on a pooled connection, or in a transaction.
pub(crate) enum On<'e, DB: Database> {
    Pool(&'e Pool<DB>),
    Tx(&'e mut Transaction<'static, DB>),
}

impl<'e, DB: Database> From<&'e Pool<DB>> for On<'e, DB> {
    fn from(pool: &'e Pool<DB>) -> Self {
        Self::Pool(pool)
    }
}

impl<'e, DB: Database> From<&'e mut Transaction<'static, DB>> for On<'e, DB> {
    fn from(tx: &'e mut Transaction<'static, DB>) -> Self {
        Self::Tx(tx)
    }
}

/// Running statements, for any database sqlx runs them on (sqlx's bounds stated once, here).
pub(crate) trait Run: Database {
    fn execute<'e, 'q: 'e>(
        query: Query<'q, Self>,
        on: On<'e, Self>,
    ) -> BoxFuture<'e, Result<Self::QueryResult, sqlx::Error>>;
    fn fetch_optional<'e, 'q: 'e>(
        query: Query<'q, Self>,
        on: On<'e, Self>,
    ) -> BoxFuture<'e, Result<Option<Self::Row>, sqlx::Error>>;
    fn fetch_all<'e, 'q: 'e>(
        query: Query<'q, Self>,
        on: On<'e, Self>,
    ) -> BoxFuture<'e, Result<Vec<Self::Row>, sqlx::Error>>;
}

impl<DB> Run for DB
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
{
    fn execute<'e, 'q: 'e>(
        query: Query<'q, DB>,
        on: On<'e, DB>,
    ) -> BoxFuture<'e, Result<DB::QueryResult, sqlx::Error>> {
        match on {
            On::Pool(pool) => pool.execute(query),
            On::Tx(tx) => tx.as_mut().execute(query),
        }
    }

    fn fetch_optional<'e, 'q: 'e>(
        query: Query<'q, DB>,
        on: On<'e, DB>,
    ) -> BoxFuture<'e, Result<Option<DB::Row>, sqlx::Error>> {
        match on {
            On::Pool(pool) => pool.fetch_optional(query),
            On::Tx(tx) => tx.as_mut().fetch_optional(query),
        }
    }

    fn fetch_all<'e, 'q: 'e>(
        query: Query<'q, DB>,
        on: On<'e, DB>,
    ) -> BoxFuture<'e, Result<Vec<DB::Row>, sqlx::Error>> {
        match on {
            On::Pool(pool) => pool.fetch_all(query),
            On::Tx(tx) => tx.as_mut().fetch_all(query),
        }
    }
}

/// A statement being bound, then run [`On`] a pool or a transaction.
pub(crate) struct Stmt<'q, D: Dialect>(pub(crate) Query<'q, D::Db>);

impl<'q, D: Dialect> Stmt<'q, D> {
    pub(crate) fn bind<'t, T: Param<'t>>(self, value: T) -> Self {
        Self(D::bind(self.0, value))
    }

    pub(crate) fn id(self, id: Uuid) -> Self {
        Self(D::bind_id(self.0, id))
    }

    pub(crate) fn opt_id(self, id: Option<Uuid>) -> Self {
        Self(D::bind_opt_id(self.0, id))
    }

    /// Binds a page of a newest-first listing: the cursor (ids below it), then the page size.
    pub(crate) fn page(self, page: crate::Page) -> Self {
        self.id(page.before.unwrap_or(crate::store::ABOVE_ALL_IDS))
            .bind(i64::from(page.limit))
    }

    /// Runs the statement; how many rows it changed.
    pub(crate) fn execute<'e>(
        self,
        on: impl Into<On<'e, D::Db>>,
    ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send + 'e
    where
        'q: 'e,
    {
        let run = <D::Db as Run>::execute(self.0, on.into());
        async move { Ok(run.await?.rows_affected()) }
    }

    pub(crate) fn fetch_optional<'e>(
        self,
        on: impl Into<On<'e, D::Db>>,
    ) -> BoxFuture<'e, Result<Option<RowOf<D>>, sqlx::Error>>
    where
        'q: 'e,
    {
        <D::Db as Run>::fetch_optional(self.0, on.into())
    }

    /// The one row the statement returns; [`sqlx::Error::RowNotFound`] when there is none.
    pub(crate) fn fetch_one<'e>(
        self,
        on: impl Into<On<'e, D::Db>>,
    ) -> impl Future<Output = Result<RowOf<D>, sqlx::Error>> + Send + 'e
    where
        'q: 'e,
    {
        let run = <D::Db as Run>::fetch_optional(self.0, on.into());
        async move { run.await?.ok_or(sqlx::Error::RowNotFound) }
    }

    pub(crate) fn fetch_all<'e>(
        self,
        on: impl Into<On<'e, D::Db>>,
    ) -> BoxFuture<'e, Result<Vec<RowOf<D>>, sqlx::Error>>
    where
        'q: 'e,
    {
        <D::Db as Run>::fetch_all(self.0, on.into())
    }
}
