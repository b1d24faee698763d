//! hot-standby: placeholder until the plugin is written; refuses every policy.
use vigil_sdk::prelude::*;

struct HotStandby;

impl Policy for HotStandby {
    type Params = serde::de::IgnoredAny;
    type State = ();

    fn validate(_: &Self::Params) -> Result<(), String> {
        Err("not implemented yet".into())
    }

    fn decide(_: &Self::Params, _: &Tick, _: &mut ()) -> Decision {
        Decision::keep()
    }
}

vigil_sdk::export_policy!(HotStandby);
