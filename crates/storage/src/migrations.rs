//! Schema migrations, embedded in the binary: one folder per database flavour with the same
//! numbering. sqlx runs each migration in a transaction, so a failing one leaves the schema as it was.

use std::borrow::Cow;

use sqlx::SqlSafeStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};

use crate::StoreResult;

#[derive(Debug, Clone, Copy)]
pub(crate) enum Flavour {
    Postgres,
    Sqlite,
}

// One line per migration, in order; both flavours keep the same numbering.
#[rustfmt::skip]
const POSTGRES: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("../migrations/postgres/0001_init.sql")),
    (2, "async retries", include_str!("../migrations/postgres/0002_async_retries.sql")),
    (3, "capacity", include_str!("../migrations/postgres/0003_capacity.sql")),
    (4, "sessions", include_str!("../migrations/postgres/0004_sessions.sql")),
    (5, "retention and quotas", include_str!("../migrations/postgres/0005_retention_quotas.sql")),
    (6, "logging", include_str!("../migrations/postgres/0006_logging.sql")),
    (7, "layers", include_str!("../migrations/postgres/0007_layers.sql")),
];
#[rustfmt::skip]
const SQLITE: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("../migrations/sqlite/0001_init.sql")),
    (2, "async retries", include_str!("../migrations/sqlite/0002_async_retries.sql")),
    (3, "capacity", include_str!("../migrations/sqlite/0003_capacity.sql")),
    (4, "sessions", include_str!("../migrations/sqlite/0004_sessions.sql")),
    (5, "retention and quotas", include_str!("../migrations/sqlite/0005_retention_quotas.sql")),
    (6, "logging", include_str!("../migrations/sqlite/0006_logging.sql")),
    (7, "layers", include_str!("../migrations/sqlite/0007_layers.sql")),
];

pub(crate) fn migrator(flavour: Flavour) -> Migrator {
    let set = match flavour {
        Flavour::Postgres => POSTGRES,
        Flavour::Sqlite => SQLITE,
    };
    Migrator::with_migrations(
        set.iter()
            .map(|&(version, description, sql)| {
                Migration::new(
                    version,
                    Cow::Borrowed(description),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect(),
    )
}

/// Connects to `url` and brings its schema up to date (what `voltrun migrate` runs).
pub async fn migrate(url: &str) -> StoreResult<()> {
    let store = crate::connect(url, 1).await?;
    store.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use sqlx::Connection;

    use super::*;

    /// The real migrations followed by one that creates a table and then fails.
    /// Every migration's version: what a fully migrated database records.
    fn all_versions(flavour: Flavour) -> Vec<i64> {
        migrator(flavour).iter().map(|m| m.version).collect()
    }

    fn with_broken_tail(flavour: Flavour) -> Migrator {
        let mut migrations: Vec<Migration> = migrator(flavour).iter().cloned().collect();
        let sql = "CREATE TABLE half_done (id INTEGER); SELECT * FROM no_such_table;";
        migrations.push(Migration::new(
            999,
            Cow::Borrowed("broken"),
            MigrationType::Simple,
            sql.into_sql_str(),
            false,
        ));
        Migrator::with_migrations(migrations)
    }

    #[tokio::test]
    async fn a_failing_sqlite_migration_leaves_the_schema_as_it_was() {
        let path =
            std::env::temp_dir().join(format!("voltrun-migrate-{}.db", uuid::Uuid::new_v4()));
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        migrator(Flavour::Sqlite).run(&mut conn).await.unwrap();
        assert!(
            with_broken_tail(Flavour::Sqlite)
                .run(&mut conn)
                .await
                .is_err()
        );
        let half_done: Option<String> =
            sqlx::query_scalar("SELECT name FROM sqlite_master WHERE name = 'half_done'")
                .fetch_optional(&mut conn)
                .await
                .unwrap();
        assert_eq!(
            half_done, None,
            "the failed migration's first statement was rolled back"
        );
        let versions: Vec<i64> =
            sqlx::query_scalar("SELECT version FROM _sqlx_migrations ORDER BY version")
                .fetch_all(&mut conn)
                .await
                .unwrap();
        assert_eq!(versions, all_versions(Flavour::Sqlite));
        let _ = std::fs::remove_file(&path);
    }

    #[tokio::test]
    async fn a_failing_postgres_migration_leaves_the_schema_as_it_was() {
        let base = std::env::var("VOLTRUN_TEST_DATABASE_URL")
            .expect("the PostgreSQL tests need VOLTRUN_TEST_DATABASE_URL: run scripts/test.sh, which provides a server");
        let mut admin = sqlx::PgConnection::connect(&base).await.unwrap();
        let name = format!("voltrun_migrate_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .unwrap();
        let (server, _) = base.split('?').next().unwrap().rsplit_once('/').unwrap();
        let mut conn = sqlx::PgConnection::connect(&format!("{server}/{name}"))
            .await
            .unwrap();
        migrator(Flavour::Postgres).run(&mut conn).await.unwrap();
        assert!(
            with_broken_tail(Flavour::Postgres)
                .run(&mut conn)
                .await
                .is_err()
        );
        let half_done: Option<String> = sqlx::query_scalar("SELECT to_regclass('half_done')::text")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(
            half_done, None,
            "the failed migration's first statement was rolled back"
        );
        let versions: Vec<i64> =
            sqlx::query_scalar("SELECT version FROM _sqlx_migrations ORDER BY version")
                .fetch_all(&mut conn)
                .await
                .unwrap();
        assert_eq!(versions, all_versions(Flavour::Postgres));
    }

    /// The migrations up to `version`.
    fn up_to(flavour: Flavour, version: i64) -> Migrator {
        Migrator::with_migrations(
            migrator(flavour)
                .iter()
                .filter(|m| m.version <= version)
                .cloned()
                .collect(),
        )
    }

    /// Refresh-token families from before sessions existed: a live one and a revoked one (ids and
    /// times as text, which SQLite stores them as).
    const FAMILIES: &str = "INSERT INTO users (id, email, name, password_hash, created_at, updated_at) VALUES \
        ('00000000-0000-7000-8000-000000000001', 'a@example.com', NULL, 'x', '2025-01-01 00:00:00+00:00', '2025-01-01 00:00:00+00:00'); \
        INSERT INTO refresh_tokens (id, user_id, family_id, token_hash, created_at, expires_at, used_at, revoked_at) VALUES \
        ('00000000-0000-7000-8000-0000000000a1', '00000000-0000-7000-8000-000000000001', '00000000-0000-7000-8000-0000000000f1', 'h1', '2025-01-01 00:00:00+00:00', '2025-01-31 00:00:00+00:00', '2025-01-02 00:00:00+00:00', NULL), \
        ('00000000-0000-7000-8000-0000000000a2', '00000000-0000-7000-8000-000000000001', '00000000-0000-7000-8000-0000000000f1', 'h2', '2025-01-02 00:00:00+00:00', '2025-02-01 00:00:00+00:00', NULL, NULL), \
        ('00000000-0000-7000-8000-0000000000a3', '00000000-0000-7000-8000-000000000001', '00000000-0000-7000-8000-0000000000f2', 'h3', '2025-01-03 00:00:00+00:00', '2025-02-02 00:00:00+00:00', NULL, '2025-01-04 00:00:00+00:00');";

    /// What the sessions migration made of [`FAMILIES`]: (created, expires, revoked) per family.
    const SESSIONS: &str = "SELECT SUBSTR(CAST(created_at AS TEXT), 1, 10) || ' ' || \
        SUBSTR(CAST(expires_at AS TEXT), 1, 10) || ' ' || \
        COALESCE(SUBSTR(CAST(revoked_at AS TEXT), 1, 10), '-') FROM sessions ORDER BY id";

    #[tokio::test]
    async fn the_sessions_migration_keeps_existing_sqlite_families() {
        let path =
            std::env::temp_dir().join(format!("voltrun-sessions-{}.db", uuid::Uuid::new_v4()));
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        up_to(Flavour::Sqlite, 3).run(&mut conn).await.unwrap();
        sqlx::raw_sql(FAMILIES).execute(&mut conn).await.unwrap();
        migrator(Flavour::Sqlite).run(&mut conn).await.unwrap();
        let sessions: Vec<String> = sqlx::query_scalar(SESSIONS)
            .fetch_all(&mut conn)
            .await
            .unwrap();
        assert_eq!(
            sessions,
            [
                "2025-01-01 2025-02-01 -",
                "2025-01-03 2025-02-02 2025-01-04"
            ]
        );
        let _ = std::fs::remove_file(&path);
    }

    #[tokio::test]
    async fn the_sessions_migration_keeps_existing_postgres_families() {
        let base = std::env::var("VOLTRUN_TEST_DATABASE_URL")
            .expect("the PostgreSQL tests need VOLTRUN_TEST_DATABASE_URL: run scripts/test.sh, which provides a server");
        let mut admin = sqlx::PgConnection::connect(&base).await.unwrap();
        let name = format!("voltrun_sessions_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .unwrap();
        let (server, _) = base.split('?').next().unwrap().rsplit_once('/').unwrap();
        let mut conn = sqlx::PgConnection::connect(&format!("{server}/{name}"))
            .await
            .unwrap();
        up_to(Flavour::Postgres, 3).run(&mut conn).await.unwrap();
        sqlx::raw_sql(FAMILIES).execute(&mut conn).await.unwrap();
        migrator(Flavour::Postgres).run(&mut conn).await.unwrap();
        let sessions: Vec<String> = sqlx::query_scalar(SESSIONS)
            .fetch_all(&mut conn)
            .await
            .unwrap();
        assert_eq!(
            sessions,
            [
                "2025-01-01 2025-02-01 -",
                "2025-01-03 2025-02-02 2025-01-04"
            ]
        );
    }
}
