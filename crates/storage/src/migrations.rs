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

const POSTGRES: &[(i64, &str, &str)] = &[(
    1,
    "init",
    include_str!("../migrations/postgres/0001_init.sql"),
)];
const SQLITE: &[(i64, &str, &str)] = &[(
    1,
    "init",
    include_str!("../migrations/sqlite/0001_init.sql"),
)];

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
