//! The CPU executor as a training [`Objective`], with the `--checkpoint POLICY` of the command line.

use modelspec_dsl::ir::ModelSpec;
use modelspec_dsl::plan::{self, PolicyOverride};

use super::{Objective, TrainError};
use crate::Params;
use crate::exec::{Executor, Policy};

/// Runs loss and gradients through [`Executor`], dropout keyed by each micro-batch's seed.
#[derive(Debug, Clone)]
pub struct CpuObjective {
    executor: Executor,
    policy: Option<PolicyOverride>,
    /// The resolved policy and the `(batch, seq)` it was planned for (budgets depend on both).
    resolved: Option<((usize, usize), Policy)>,
}

fn model_error(e: crate::Error) -> TrainError {
    TrainError::Model(Box::new(e))
}

impl CpuObjective {
    /// An objective for `spec`; `policy` overrides the spec's activation-checkpoint policies
    /// (`none`, `full`, `auto`, `save(...)`, `recompute(...)`, `budget(0.5)`, `budget(1GiB)`).
    pub fn new(spec: &ModelSpec, policy: Option<&str>) -> Result<Self, TrainError> {
        let executor = Executor::new(spec).map_err(model_error)?;
        let policy = policy
            .map(|text| {
                plan::parse_policy(text)
                    .map_err(|e| TrainError::Config(format!("--checkpoint: {e}")))
            })
            .transpose()?;
        Ok(Self {
            executor,
            policy,
            resolved: None,
        })
    }

    /// The executor.
    pub fn executor(&self) -> &Executor {
        &self.executor
    }

    fn policy_for(&mut self, batch: usize, seq: usize) -> Result<Policy, TrainError> {
        if let Some((shape, policy)) = &self.resolved
            && *shape == (batch, seq)
        {
            return Ok(policy.clone());
        }
        let policy = Policy::from_override(self.executor.spec(), self.policy.as_ref(), batch, seq)
            .map_err(|e| TrainError::Config(format!("--checkpoint: {e}")))?;
        self.resolved = Some(((batch, seq), policy.clone()));
        Ok(policy)
    }
}

impl Objective for CpuObjective {
    fn loss_and_grads(
        &mut self,
        params: &Params,
        tokens: &[u32],
        batch: usize,
        seed: u64,
    ) -> Result<(f32, Params), TrainError> {
        let policy = self.policy_for(batch, tokens.len() / batch.max(1))?;
        self.executor.set_dropout_seed(Some(seed));
        let out = self
            .executor
            .loss_and_grads(params, tokens, batch, &policy)
            .map_err(model_error)?;
        Ok((out.loss as f32, out.grads))
    }

    fn loss(&mut self, params: &Params, tokens: &[u32], batch: usize) -> Result<f32, TrainError> {
        self.executor
            .loss(params, tokens, batch)
            .map(|l| l as f32)
            .map_err(model_error)
    }
}
