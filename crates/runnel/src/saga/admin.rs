//! Operating sagas where their definitions are not loaded (the CLI, the admin API): list
//! and inspect instances from the store, and ask for an operator action. A request is a
//! timer due now on the instance, committed with a history line; the service that runs
//! the saga claims it and applies it through the saga's plan, so an action never runs
//! against the wrong definition.

use runnel_core::processor::{
    CancelTimers, CommitOutcome, ExpectedInstance, HistoryLine, InstanceRecord, InstanceStatus,
    ProcessorStore, TimerSpec, Transition,
};
use runnel_core::Clock;

use super::runtime::{OperatorAction, SagaError, TimerWork, OPERATOR_TIMER};

/// Whether `action` applies to an instance in `status`, and why not.
pub fn check_action(action: OperatorAction, status: InstanceStatus) -> Result<(), &'static str> {
    match (action, status) {
        (OperatorAction::Retry | OperatorAction::Skip, s) if s.is_parked() => Ok(()),
        (OperatorAction::Retry | OperatorAction::Skip, _) => {
            Err("only a parked instance (compensation-failed or needs-attention) can be retried or have its step skipped")
        }
        (
            OperatorAction::Compensate,
            InstanceStatus::Running | InstanceStatus::NeedsAttention,
        ) => Ok(()),
        (OperatorAction::Compensate, InstanceStatus::Compensating | InstanceStatus::CompensationFailed) => {
            Err("the instance is already compensating")
        }
        (OperatorAction::Compensate, _) => Err("the instance has finished"),
    }
}

/// Asks the service running saga `kind` to apply `action` to instance `id`: checks the
/// instance's status (a clear error and no change when the action does not apply), then
/// commits the request. Returns the instance as it was.
pub async fn request_action(
    store: &dyn ProcessorStore,
    clock: &dyn Clock,
    kind: &str,
    id: &str,
    action: OperatorAction,
) -> Result<InstanceRecord, SagaError> {
    for _ in 0..super::CONFLICT_RETRIES_MAX {
        let Some(record) = store.load(kind, id).await? else {
            return Err(SagaError::UnknownInstance {
                kind: kind.to_string(),
                id: id.to_string(),
            });
        };
        check_action(action, record.status).map_err(|reason| SagaError::NotApplicable {
            id: id.to_string(),
            status: record.status,
            reason,
        })?;
        let payload = serde_json::to_vec(&TimerWork::Operator { action }).expect("serialises");
        let t = Transition {
            kind: kind.to_string(),
            id: id.to_string(),
            expected: ExpectedInstance::Version(record.version),
            definition_version: record.definition_version,
            correlation: None,
            state: record.state.clone(),
            status: record.status,
            progress: record.progress.clone(),
            data: record.data.clone(),
            last_error: record.last_error.clone(),
            outbox: vec![],
            cancel_timers: CancelTimers::None,
            schedule: vec![TimerSpec {
                name: OPERATOR_TIMER.into(),
                due: clock.now(),
                payload,
                leased_to: None,
            }],
            fired_timer: None,
            inbox: None,
            history: vec![HistoryLine {
                step: None,
                what: format!("operator-requested-{}", action.as_str()),
                detail: None,
            }],
        };
        match store.commit(t).await? {
            CommitOutcome::Committed { .. } => return Ok(record),
            _ => continue,
        }
    }
    Err(SagaError::TooManyConflicts { id: id.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_apply_only_in_their_states() {
        use InstanceStatus::*;
        assert!(check_action(OperatorAction::Retry, CompensationFailed).is_ok());
        assert!(check_action(OperatorAction::Skip, NeedsAttention).is_ok());
        assert!(check_action(OperatorAction::Retry, Running).is_err());
        assert!(check_action(OperatorAction::Compensate, Running).is_ok());
        assert!(check_action(OperatorAction::Compensate, Completed).is_err());
        assert!(check_action(OperatorAction::Compensate, Compensating).is_err());
    }
}
