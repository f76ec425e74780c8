//! Tenant isolation: a store handle scoped to one tenant ([`PostgresEventStore::tenant`],
//! [`PostgresConfig::tenant`](super::PostgresConfig::tenant)), enforced by the row-level
//! security policy of `migrations/0007_positions_tenants.sql` on the session setting
//! `eventflow.tenant`, and [`PostgresEventStore::grant_tenant`] for the operator.

use sqlx::postgres::PgConnectOptions;

use super::schema::Schema;
use super::store::PostgresEventStore;
use crate::error::{Error, Result};
use crate::event::Event;

/// The session setting the row-level security policy reads.
pub(crate) const TENANT_SETTING: &str = "eventflow.tenant";

/// Checks a tenant id for a handle: 1 to 200 characters, no NUL, no control characters.
pub(crate) fn validate_tenant(tenant: &str) -> Result<()> {
    if tenant.is_empty() || tenant.chars().count() > 200 || tenant.chars().any(char::is_control) {
        return Err(Error::InvalidArgument(format!(
            "invalid tenant id {tenant:?}: use 1 to 200 characters, no control characters"
        )));
    }
    Ok(())
}

/// `options` with `eventflow.tenant` set at connection start-up (escaped as libpq's `options`
/// wants: a backslash before spaces and backslashes).
pub(crate) fn with_tenant(options: PgConnectOptions, tenant: &str) -> PgConnectOptions {
    let mut escaped = String::with_capacity(tenant.len());
    for c in tenant.chars() {
        if c == '\\' || c.is_whitespace() {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    options.options([(TENANT_SETTING, escaped)])
}

impl PostgresEventStore {
    /// A handle for `tenant` over a pool of its own (same server, role, size and timeouts as
    /// this store's): each connection sets the session setting `eventflow.tenant`, so the
    /// row-level security policy on `events` lets it read and append that tenant's events only;
    /// appended events get `tenant` as their `metadata.tenant_id` (an event naming another
    /// tenant is refused with [`Error::InvalidArgument`]).
    ///
    /// Row-level security binds roles that do not own the tables and are not superusers: the
    /// owner (the role that ran `migrate()`; operators, the relay) sees every tenant. For
    /// isolation that holds even against raw SQL through the handle's connections, connect as
    /// a role per tenant ([`PostgresConfig::tenant`](super::PostgresConfig::tenant) with that
    /// role's credentials), given its tenant by [`grant_tenant`](Self::grant_tenant): such a
    /// session that sets `eventflow.tenant` to another tenant sees nothing. `tenant()` on the
    /// store of a role granted several tenants switches among those.
    ///
    /// Stream ids stay global: two tenants must not use the same stream id (the second one's
    /// first append gets a [`Conflict`](Error::Conflict), as it cannot see the first's events).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an empty tenant id or one with control characters.
    pub fn tenant(&self, tenant: &str) -> Result<PostgresEventStore> {
        validate_tenant(tenant)?;
        let pool = &self.inner.pool;
        let options = with_tenant((*pool.connect_options()).clone(), tenant);
        let scoped = pool.options().clone().connect_lazy_with(options);
        Self::builder(scoped)
            .schema(self.schema())
            .poll_interval(self.inner.poll_interval)
            .settle_timeout(self.inner.settle_timeout)
            .tenant(Some(tenant.to_owned()))
            .build()
    }

    /// The tenant this handle is scoped to (`None` for an operator's handle).
    pub fn tenant_id(&self) -> Option<&str> {
        self.inner.tenant.as_deref()
    }

    /// Lets the database role `role` use tenant handles for `tenant` (run by the tables' owner,
    /// after `migrate()`): records the grant the row-level security policy checks, and grants
    /// the role what a tenant handle needs (`USAGE` on the schema, `SELECT` and `INSERT` on
    /// `events`, `SELECT` on `position_base` and `tenant_roles`). Idempotent. Create the role
    /// itself (`CREATE ROLE ... LOGIN`) as usual; grant it more (checkpoints, snapshots) as its
    /// readers need.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a role name outside `[a-z0-9_]` (1 to 63 characters, not
    /// starting with a digit or `pg_`) or a bad tenant id; [`Error::Backend`] when the role
    /// does not exist or this role may not grant.
    pub async fn grant_tenant(&self, role: &str, tenant: &str) -> Result<()> {
        validate_tenant(tenant)?;
        let role = Schema::new(role)
            .map_err(|_| Error::InvalidArgument(format!("invalid role name {role:?}")))?;
        let mut tx = self.inner.pool.begin().await.map_err(|e| self.map(e))?;
        for statement in self.inner.sql.grant_tenant_privileges(role.quoted()) {
            sqlx::query(&statement)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.map(e))?;
        }
        sqlx::query(&self.inner.sql.grant_tenant)
            .bind(role.name())
            .bind(tenant)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.map(e))?;
        tx.commit().await.map_err(|e| self.map(e))
    }

    /// Gives events appended through a tenant handle its tenant; refuses another tenant's.
    pub(super) fn stamp_tenant(&self, events: &mut [Event]) -> Result<()> {
        let Some(tenant) = &self.inner.tenant else {
            return Ok(());
        };
        for event in events {
            match &event.metadata.tenant_id {
                None => event.metadata.tenant_id = Some(tenant.clone()),
                Some(own) if own == tenant => {}
                Some(other) => {
                    return Err(Error::InvalidArgument(format!(
                        "the handle of tenant {tenant:?} cannot append event {} of tenant \
                         {other:?}",
                        event.id
                    )));
                }
            }
        }
        Ok(())
    }
}
