//! Restarts: workloads roll once for each real change of the data of a managed Secret they use.
//!
//! - [`rule`]: the whole rule, pure: which Secrets a pod template uses, what the workload
//!   records of them, when a change restarts it (`auto-restart`: the Secret's, else the
//!   workload's, else the Namespace's, else `AUTO_RESTART`; the workload's metadata before its
//!   pod template; an empty value is unset), and the one annotation whose change rolls the pods.
//! - [`governor`]: when a restart the rule asks for may go (debounce, budget, health-gated
//!   rollouts, the circuit breaker for flapping Secrets), pure.
//! - [`controller`]: the watches and reconcilers that apply both to Deployments, StatefulSets,
//!   DaemonSets and, when the cluster has them, Argo Rollouts ([`argo`]: restarted through
//!   `spec.restartAt`).

pub mod argo;
pub mod controller;
pub mod governor;
pub mod rule;
