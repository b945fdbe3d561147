//! Cursor pagination. Lists are ordered newest first by UUIDv7 id; the cursor is the last id of a
//! page, encoded so clients treat it as opaque.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use voltrun_domain::ValidationError;
use voltrun_storage::Page;

pub const DEFAULT_LIMIT: u32 = 20;
pub const MAX_LIMIT: u32 = 100;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Page size, 1–100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    #[param(pattern = "^([A-Za-z0-9_-]{21}[AQgw])?$")]
    pub cursor: Option<String>,
}

impl PageParams {
    /// The page to ask the store for: one row more than the limit, to learn whether a next page exists.
    pub fn to_page(&self) -> Result<(Page, u32), ValidationError> {
        let limit = self.limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(ValidationError::new(
                "limit",
                format!("must be between 1 and {MAX_LIMIT}"),
            ));
        }
        let before = self
            .cursor
            .as_deref()
            .filter(|c| !c.is_empty())
            .map(decode_cursor)
            .transpose()?;
        Ok((
            Page {
                before,
                limit: limit + 1,
            },
            limit,
        ))
    }
}

fn decode_cursor(cursor: &str) -> Result<Uuid, ValidationError> {
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| Uuid::from_slice(&bytes).ok())
        .ok_or_else(|| ValidationError::new("cursor", "is not a cursor this server issued"))
}

/// One page of a list.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Paginated<T> {
    pub data: Vec<T>,
    /// Pass as `cursor` to get the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

impl<T> Paginated<T> {
    /// Builds a page from `rows` fetched with [`PageParams::to_page`].
    pub fn from_rows<R>(
        mut rows: Vec<R>,
        limit: u32,
        id: impl Fn(&R) -> Uuid,
        map: impl FnMut(R) -> T,
    ) -> Self {
        let limit = limit as usize;
        let next_cursor = if rows.len() > limit {
            rows.truncate(limit);
            rows.last()
                .map(|r| URL_SAFE_NO_PAD.encode(id(r).as_bytes()))
        } else {
            None
        };
        Self {
            data: rows.into_iter().map(map).collect(),
            next_cursor,
        }
    }
}
