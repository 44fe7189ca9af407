//! The branch's login role and database, set over the compute's Unix socket.

use super::*;

impl Node {
    // ----- credentials --------------------------------------------------------------

    /// `PUT /v1/timelines/{id}/credentials`: creates the branch's login role with this
    /// password (or resets the password of the role a fork inherited) and its database,
    /// over the compute's Unix socket as the bootstrap superuser. Idempotent.
    #[instrument(skip(self, creds), fields(user = %creds.user, database = %creds.database))]
    pub async fn set_credentials(
        &self,
        id: TimelineId,
        creds: &ramify_api::Credentials,
    ) -> Result<(), NodeError> {
        use ramify_api::names::{validate_password, validate_sql_identifier};
        validate_sql_identifier("role name", &creds.user).map_err(NodeError::Invalid)?;
        if creds.adopt_objects {
            ramify_api::names::validate_source_database(&creds.database)
        } else {
            validate_sql_identifier("database name", &creds.database)
        }
        .map_err(NodeError::Invalid)?;
        validate_password(&creds.password).map_err(NodeError::Invalid)?;
        if self.record(id)?.request.follow.is_some() {
            return Err(NodeError::Conflict(format!(
                "timeline {id} follows another Postgres and has no credentials of its own (a physical follower's roles are its source's, a logical follower's data belongs to no login); fork it to get a branch with credentials of its own"
            )));
        }
        let Some(running) = self.running(id).await else {
            return Err(NodeError::Conflict(format!(
                "timeline {id} has no running compute; start it before setting credentials"
            )));
        };
        let c = self.connect_compute(id, running.port).await?;
        control::ensure_login(
            &c,
            &creds.user,
            &creds.password,
            &creds.database,
            creds.disable_other_logins,
        )
        .await?;
        if creds.adopt_objects {
            control::adopt_objects(
                &self.dir(id).run(),
                running.port,
                &creds.database,
                &creds.user,
            )
            .await?;
        }
        info!(timeline = %id, adopt = creds.adopt_objects, "credentials set");
        Ok(())
    }
}
