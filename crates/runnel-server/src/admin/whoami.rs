//! `GET /admin/whoami`: the caller's key name and role, so a client (the dashboard) can
//! offer only the actions the role allows. The server enforces roles either way.

use axum::{Extension, Json};
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::{Caller, Role};

/// Who the key is.
#[derive(Debug, Serialize, ToSchema)]
pub struct Whoami {
    /// The key's name (`anonymous` on an open server).
    pub name: String,
    /// `viewer`, `operator` or `admin`.
    #[schema(value_type = String)]
    pub role: Role,
    /// Whether the caller sees message bodies (operators and admins).
    pub sees_bodies: bool,
}

/// `GET /admin/whoami`.
#[utoipa::path(get, path = "/admin/whoami",
    responses((status = 200, description = "The caller's key name and role", body = Whoami))
)]
pub async fn whoami(Extension(caller): Extension<Caller>) -> Json<Whoami> {
    Json(Whoami {
        sees_bodies: super::sees_bodies(&caller),
        name: caller.name,
        role: caller.role,
    })
}
