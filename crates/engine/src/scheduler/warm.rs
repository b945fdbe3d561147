//! Keeping functions warm: a version's floor of `min_instances` idle instances (started ahead of
//! invocations, never reaped, replaced when one dies), and letting a deleted function's go.

use uuid::Uuid;
use voltrun_domain::function::{EnvVars, FunctionRecord};

use super::{LocalEngine, NotStarted};
use crate::{Engine, EngineError};

impl LocalEngine {
    /// Starts instances until `function.min_instances` of its current version are warm (its
    /// floor, which replaces any other version's); returns how many it started.
    pub(super) async fn keep_floor(
        &self,
        function: FunctionRecord,
        env: EnvVars,
    ) -> Result<usize, EngineError> {
        let key = (function.id, function.version);
        let wanted = usize::try_from(function.min_instances).unwrap_or(0);
        // The new version's floor replaces the old versions' idle instances at once: each holds
        // memory, a uid and its user's share, and an update must not add a floor to the old one.
        let (have, stale) = self.pooled(|pool| pool.set_floor(key, wanted)).await;
        for instance in stale {
            instance.stop().await;
        }
        if have >= wanted {
            return Ok(0);
        }
        let runtime = self.runtime_of(&function)?;
        let mut started = 0;
        for _ in have..wanted {
            let mut instance = match self.start_instance(&function, &runtime, &env).await {
                Ok(instance) => instance,
                Err(NotStarted::Refused(e)) => return Err(e),
                Err(NotStarted::Failed { failure, .. }) => {
                    return Err(EngineError::Internal(format!(
                        "pre-warming failed: {failure:?}"
                    )));
                }
            };
            // Its initialisation happened ahead of time: invocations on it are not cold starts.
            instance.init = None;
            // An update or a deletion made while it started has replaced this version's floor
            // (and drained the pool of this version): it is not kept.
            if let Some(late) = self.pooled(|pool| pool.put_prewarmed(key, instance)).await {
                late.stop().await;
                break;
            }
            metrics::counter!("voltrun_prewarmed_instances_total", "runtime" => runtime.id.clone())
                .increment(1);
            started += 1;
        }
        Ok(started)
    }

    /// Forgets a deleted function: its floor goes, and its idle instances stop.
    pub(super) async fn forget(&self, function_id: Uuid) {
        for instance in self.pooled(|pool| pool.release(function_id)).await {
            instance.stop().await;
        }
    }

    /// Keeps `function`'s floor of warm instances after one of them ended: starts its replacement
    /// in the background.
    pub(super) async fn rewarm_after_loss(&self, function: &FunctionRecord, env: &EnvVars) {
        let key = (function.id, function.version);
        if self.pooled(|pool| pool.floor(key)).await == 0 {
            return;
        }
        let Some(me) = self.me.upgrade() else { return };
        let (function, env) = (function.clone(), env.clone());
        tokio::spawn(async move {
            if let Err(e) = me.prewarm(function, env).await {
                tracing::warn!(error = %e, "re-warming after an instance ended failed");
            }
        });
    }
}
