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
        let follow = self.record(id)?.request.follow;
        // A source's database (`postgres` included) for a fork that adopts its objects
        // and for a logical follower's reader; a name of the branch's own otherwise.
        if creds.adopt_objects || follow.is_some() {
            ramify_api::names::validate_source_database(&creds.database)
        } else {
            validate_sql_identifier("database name", &creds.database)
        }
        .map_err(NodeError::Invalid)?;
        validate_password(&creds.password).map_err(NodeError::Invalid)?;
        // A physical follower's roles are its source's; a logical follower gets one
        // read-only login, in the database it copied.
        let reader = match &follow {
            Some(f) if f.mode.is_physical() => {
                return Err(NodeError::Conflict(format!(
                    "timeline {id} is a hot standby of another Postgres: its roles are its source's; fork it to get a branch with credentials of its own"
                )));
            }
            Some(f) => {
                let copied = ramify_api::names::uri_database(&f.conninfo);
                if creds.database != copied || creds.adopt_objects || creds.disable_other_logins {
                    return Err(NodeError::Invalid(format!(
                        "timeline {id} follows a publication logically: its login reads database {copied:?} and nothing more (no adopt_objects, no disable_other_logins)"
                    )));
                }
                true
            }
            None => false,
        };
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
            reader,
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
        info!(timeline = %id, adopt = creds.adopt_objects, reader, "credentials set");
        Ok(())
    }
}
