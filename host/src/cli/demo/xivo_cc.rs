//! `vigil demo xivo-cc`: a XiVO pair (as `vigil demo xivo`) and a CC node beside each XiVO, watching
//! it. The main XiVO is killed: the standby XiVO takes the telephony, the standby CC starts its
//! services and the main CC stops its own, each telling users to reconnect to the other CC; the main
//! XiVO comes back and both CCs follow again.

use super::{all_running, cluster, marker_services, CliError, Demo};
use crate::cluster::NodeSpec;
use crate::model::{Mode, Role};
use std::path::Path;
use std::time::{Duration, Instant};

const CC_SERVICES: [&str; 2] = ["cc-db", "xuc"];

/// A CC policy following `xivo`; users of the other CC are sent to `other`.
fn policy(xivo: &str, other: &str, own: &str) -> String {
    format!(
        "plugin = \"xivo-cc\"\n\n[params]\nxivo = \"{xivo}\"\nother_cc_address = \"{other}\"\nown_address = \"{own}\"\nservices = {CC_SERVICES:?}\n{}",
        marker_services(&CC_SERVICES)
    )
}

pub(super) async fn run(exe: &Path, dir: &Path) -> Result<(), CliError> {
    let mut c = cluster(exe, dir, super::xivo::TIMING)?;
    super::xivo::add_pair(&mut c)?;
    let (main_url, standby_url) = ("https://cc-a.example.com", "https://cc-b.example.com");
    let mut cc_main = NodeSpec::new("cc-a", Role::Primary, &policy("xivo-a", standby_url, main_url));
    cc_main.watched = vec![("xivo-a".into(), "xivo-a".into())];
    let mut cc_standby = NodeSpec::new("cc-b", Role::Secondary, &policy("xivo-b", main_url, standby_url));
    cc_standby.watched = vec![("xivo-b".into(), "xivo-b".into())];
    c.add(cc_main).map_err(super::fail)?;
    c.add(cc_standby).map_err(super::fail)?;
    let title = "a XiVO pair (xivo-a main, xivo-b standby) and a CC node following each (cc-a watches xivo-a, cc-b watches xivo-b)";
    let mut demo = Demo::new(c, title);
    let (a, s) = (Some(Mode::Active), Some(Mode::Standby));
    for i in 0..4 {
        demo.start(i)?;
    }
    demo.wait_modes("the main side active, the standby side standby", Duration::from_secs(20), &[a, s, a, s]).await?;
    demo.wait_until("the main CC running its services, the standby CC none", Duration::from_secs(5), |d| {
        all_running(d.node(2), &CC_SERVICES, true) && all_running(d.node(3), &CC_SERVICES, false)
    })
    .await?;
    demo.note("cc-a serves the contact center beside the main XiVO");
    demo.watch(Duration::from_millis(500)).await?;

    let killed = Instant::now();
    demo.kill(0);
    demo.wait_modes("xivo-b active, cc-a standby, cc-b active", Duration::from_secs(10), &[None, a, s, a]).await?;
    demo.wait_until("the CC services moved from cc-a to cc-b", Duration::from_secs(5), |d| {
        all_running(d.node(3), &CC_SERVICES, true) && all_running(d.node(2), &CC_SERVICES, false)
    })
    .await?;
    let moved = killed.elapsed();
    demo.expect_event(3, &format!("users logged in to the other CC ({main_url}) must reconnect to this CC")).await?;
    demo.expect_event(2, &format!("users must reconnect to the other CC at {standby_url}")).await?;
    demo.note(&format!("the contact center follows the telephony to cc-b ({} ms after the kill); users are told to reconnect", moved.as_millis()));
    demo.watch(Duration::from_millis(500)).await?;

    let back = Instant::now();
    demo.start(0)?;
    demo.wait_modes("both XiVOs and both CCs back to their configured roles", Duration::from_secs(10), &[a, s, a, s]).await?;
    demo.wait_until("the CC services back on cc-a only", Duration::from_secs(5), |d| {
        all_running(d.node(2), &CC_SERVICES, true) && all_running(d.node(3), &CC_SERVICES, false)
    })
    .await?;
    let returned = back.elapsed();
    demo.note("the main XiVO serves again; cc-a runs the contact center, cc-b stopped its services");
    demo.keep("the configured roles", Duration::from_secs(1), |m| m == [a, s, a, s]).await?;
    demo.finish(&[
        format!("CC moved to the standby (kill -9 of the main XiVO → cc-b running its services): {} ms", moved.as_millis()),
        format!("CC back (main XiVO restarted → cc-a running, cc-b stopped): {} ms", returned.as_millis()),
    ])
    .await
}
