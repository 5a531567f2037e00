//! Exposed functions and main-to-frame requests.

use extension_host::FrameId;
use probe_protocol::*;

use crate::support::{self, FAILSAFE, Transport, expect_pongs};

fn calc_pongs(pongs: &[Pong]) -> Vec<&str> {
    pongs.iter().map(|pong| pong.tag.as_str()).collect()
}

async fn exposed_functions_are_typed_intact_and_withdrawable(transport: Transport) {
    let host = support::host_for(transport, &["probe"]).await;
    support::open_frames(&host, transport, 1).await;
    let mut seen = host.broadcasts();
    host.broadcast("probe", CALC_TEST.name(), &()).unwrap();
    let pongs = expect_pongs(&host, &mut seen, "probe", 1, 2).await;
    // `false`, `0`, `""`, `[]` and `None` arrive intact; a panic is an error, not `null`.
    assert_eq!(calc_pongs(&pongs), ["calc:add=42;falsy-intact=true;calls=2;explode=Panicked"]);

    // Withdrawn: every call is `NoHandler`, never a silent default.
    host.invoke::<_, ()>("probe", SET_CALCULATOR.name(), &false, FAILSAFE).await.unwrap();
    host.broadcast("probe", CALC_TEST.name(), &()).unwrap();
    let pongs = expect_pongs(&host, &mut seen, "probe", 1, 2).await;
    assert_eq!(calc_pongs(&pongs), ["calc:add=NoHandler;falsy-intact=NoHandler;calls=NoHandler;explode=NoHandler"]);

    // Exposed again, then gone with deactivation and back with re-activation (fresh state).
    host.invoke::<_, ()>("probe", SET_CALCULATOR.name(), &true, FAILSAFE).await.unwrap();
    host.deactivate("probe").await.unwrap();
    host.activate("probe").await.unwrap();
    host.broadcast("probe", CALC_TEST.name(), &()).unwrap();
    let pongs = expect_pongs(&host, &mut seen, "probe", 1, 2).await;
    assert_eq!(calc_pongs(&pongs), ["calc:add=42;falsy-intact=true;calls=2;explode=Panicked"]);
}

async fn main_asks_one_frame_and_gets_its_answer_or_a_typed_error(transport: Transport) {
    let host = support::host_for(transport, &["probe"]).await;
    support::open_frames(&host, transport, 1).await;
    support::open_frames(&host, transport, 1).await;
    let frames: Vec<u64> = host.invoke("probe", MAIN_FRAMES.name(), &(), FAILSAFE).await.unwrap();
    assert_eq!(frames, vec![1, 2]);
    let ask = |frame: u64, channel: &str, timeout_ms: u64| {
        let ask = AskFrame { frame, channel: channel.to_owned(), timeout_ms };
        host.invoke::<_, String>("probe", ASK_FRAME.name(), &ask, FAILSAFE)
    };
    assert_eq!(ask(2, "frame-info", 5_000).await.unwrap(), "frame:2");
    assert_eq!(ask(1, "frame-info", 5_000).await.unwrap(), "frame:1");
    assert_eq!(ask(7, "frame-info", 5_000).await.unwrap(), "FrameClosed", "never opened");
    assert_eq!(ask(1, "no-such-handler", 5_000).await.unwrap(), "NoHandler");
    assert_eq!(ask(1, "frame-hang", 50).await.unwrap(), "Timeout");

    // In flight when the frame closes: FrameClosed, promptly.
    let pending = ask(2, "frame-hang", 60_000);
    host.close_frame(FrameId(2)).await.unwrap();
    assert_eq!(pending.await.unwrap(), "FrameClosed");
    assert_eq!(ask(2, "frame-info", 5_000).await.unwrap(), "FrameClosed", "closed");
    let frames: Vec<u64> = host.invoke("probe", MAIN_FRAMES.name(), &(), FAILSAFE).await.unwrap();
    assert_eq!(frames, vec![1]);
}

async fn an_exposed_functions_typed_error_arrives_as_a_handler_error_with_its_data(transport: Transport) {
    let host = support::host_for(transport, &["probe"]).await;
    support::open_frames(&host, transport, 1).await;
    let mut seen = host.broadcasts();
    host.broadcast("probe", CALC_ERRORS.name(), &()).unwrap();
    let pongs = expect_pongs(&host, &mut seen, "probe", 1, 2).await;
    let results: std::collections::BTreeMap<&str, &str> = pongs[0]
        .tag
        .strip_prefix("calc-errors:")
        .expect("the calculator's error checks answered")
        .split(';')
        .filter_map(|result| result.split_once('='))
        .collect();
    // `Ok(v)` is the client's value; `Err(e)` is `Handler`, with `e`'s text and `e` as data.
    assert_eq!(results["divide"], "ok:42");
    assert_eq!(
        results["by-zero"], "Handler|cannot divide 1 by zero|Some(Ok(DivideByZero { dividend: 1 }))",
        "the error's Display text, and the typed error back from data::<CalcError>()"
    );
    assert_eq!(
        results["debug"],
        "Handler|`Calculator.fail_debug` returned an error: DebugOnly { reason: \"only debug\" }|Some(Ok(DebugOnly { reason: \"only debug\" }))",
        "without Display, the Debug text"
    );
    assert_eq!(
        results["bare"],
        "Handler|`Calculator.fail_bare` returned an error (its value is the error's data)|code=Some(7)",
        "without either, a sentence naming the function"
    );
}

conformance!(
    exposed_functions_are_typed_intact_and_withdrawable,
    an_exposed_functions_typed_error_arrives_as_a_handler_error_with_its_data,
    main_asks_one_frame_and_gets_its_answer_or_a_typed_error,
);
