//! Alerts: rules evaluated on the metric stream, and the transitions of
//! their alerts. The pure core of the `alerter` service: no I/O, no async,
//! no clock of its own (the caller passes the time in).
//!
//! Owns: the rules file ([`RuleSet::from_toml`]), the evaluation state
//! machine ([`Engine`]), its saved state ([`DeviceState`], [`Snapshot`]),
//! and the deterministic id of a transition ([`transition_id`]).
//!
//! Never: I/O, async, logging, or a panic on any input; no clock read
//! here, so the same points and ticks always give the same transitions.
//!
//! # The model
//!
//! An **alert** is one rule for one device and metric (or, for absence per
//! device, one device). It is inactive, pending (the condition holds, for
//! less than the rule's `for` so far) or firing. Each change is one
//! [`Transition`]: pending, firing, resolved (a firing alert's condition
//! stopped holding) or cleared (a pending one's did, before it fired). With
//! `for = "0s"` an alert fires at once, without a pending transition.
//!
//! **Event time drives every rule but absence.** A series (one metric of
//! one device) is evaluated point by point in event-time order. `for` is
//! measured between points: a condition that held at the last point is not
//! assumed to hold while nothing arrives, so a device that stops reporting
//! never completes a `for` (an absence rule is what notices that).
//! Windows (aggregates, rates) are `(t - window, t]` at each point's time
//! `t`.
//!
//! **Lateness.** Points may arrive out of order, within the engine's
//! allowed lateness: a point waits until its series has a point `lateness`
//! newer (event time), or the clock given to [`Engine::tick`] is
//! `lateness` past its event time, and the waiting points are then
//! evaluated oldest first. So points that arrive out of order, each before
//! its series has moved `lateness` past it, give the same transitions in
//! any order; the price is that alerts lag by up to the lateness. A point
//! that arrives after a newer point of its series was evaluated is ignored
//! and counted ([`Stats::late`]); a second point at an event time already
//! received is a duplicate ([`Stats::duplicates`]). Zero lateness
//! evaluates every point at once, and ignores any that comes after a newer
//! one.
//!
//! **Absence uses the clock.** An absence rule remembers when the pipeline
//! received the newest point of its device (or metric): `ingested_at_us`,
//! the producer's clock, so a device's own clock being wrong does not
//! matter. [`Engine::tick`] fires it once the clock passes that by the
//! rule's `for`; the next point received after that resolves it. Only
//! devices that have sent at least one point since their state began are
//! watched. Every point counts as a sign of life, late ones included.
//!
//! **Transition ids.** An alert is named by its rule, device, metric and
//! when it began ([`Transition::since_us`]: the event time of the first
//! point that met the condition; for absence, when the last point before
//! the silence was received). The id is a digest of that plus the state,
//! so the same alert derives the same ids on every replica and after every
//! redelivery, and the alerts stream's duplicate window drops a repeat.
//! Redelivered points are also absorbed by the engine itself: a point at or
//! before the newest evaluated one of its series changes nothing, so
//! feeding the same points twice yields no new transition.
//!
//! **State.** Everything the engine knows is per device, in public `serde`
//! types ([`DeviceState`]: each series' progress, waiting points, and each
//! alert's phase, window and last sign of life). A service saves the
//! devices [`Engine::take_changed`] lists and gives them back with
//! [`Engine::restore_device`] after a restart or on another replica;
//! restoring and continuing gives exactly the transitions an uninterrupted
//! run would. Restoring under changed rules drops (and ends) the alerts of
//! rules that are gone or whose condition changed.

mod engine;
pub mod rules;
mod state;
mod transition;

pub use engine::{Engine, Point, Snapshot, Stats};
pub use rules::{Rule, RuleSet, Severity};
pub use state::{Alert, DeviceState, RuleState, Seen, SeriesState, Value, ValueRef, Window};
pub use transition::{State, Transition, transition_id};
