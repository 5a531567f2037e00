//! The awkward values, both ways between the page and Rust: `u64::MAX` and `i64::MIN`
//! (BigInt in the page), binary data (`Uint8Array`), and maps with integer keys (`Map`).

use rmpv::Value;

use super::web::WebHost;
use crate::support::FAILSAFE;

/// The value, as both sides describe it (`describe` in webprobe's `src/lib.rs` and
/// `web/index.js`: the same rules).
const DESCRIBED: &str = "[int 18446744073709551615, int -9223372036854775808, bin [0,1,255], \
     {int 1: str one, int -2: str minus two, int 18446744073709551615: str max}, {str name: str x}, \
     int 9007199254740993, [int 0, bool true, nil]]";

/// The same value written in JavaScript.
const IN_JS: &str = "[2n ** 64n - 1n, -(2n ** 63n), new Uint8Array([0, 1, 255]), \
     new Map([[1, 'one'], [-2, 'minus two'], [2n ** 64n - 1n, 'max']]), { name: 'x' }, 2n ** 53n + 1n, [0, true, null]]";

fn in_rust() -> Value {
    Value::Array(vec![
        Value::from(u64::MAX),
        Value::from(i64::MIN),
        Value::Binary(vec![0, 1, 255]),
        Value::Map(vec![
            (Value::from(1), Value::from("one")),
            (Value::from(-2), Value::from("minus two")),
            (Value::from(u64::MAX), Value::from("max")),
        ]),
        Value::Map(vec![(Value::from("name"), Value::from("x"))]),
        Value::from((1u64 << 53) + 1),
        Value::Array(vec![Value::from(0), Value::from(true), Value::Nil]),
    ])
}

#[tokio::test]
async fn awkward_values_cross_from_the_page_to_rust_and_back() {
    let web = WebHost::start(&["webprobe"]).await;
    let shell = web.open_shell().await;
    let page = &shell.page;

    // What main decoded.
    let described = page.eval(&format!("webprobe.outcome(webprobe.ipc.invoke('describe', {IN_JS}))")).await;
    assert_eq!(described["ok"], DESCRIBED, "{described}");
    // Through main and back: the same JavaScript types.
    let echoed = page
        .eval(&format!(
            "webprobe.ipc.invoke('echo', {IN_JS}).then(v => ({{ described: webprobe.describe(v), \
             big: typeof v[0], min: typeof v[1], bin: v[2] instanceof Uint8Array, map: v[3] instanceof Map, \
             one: v[3].get(1), max: v[3].get(2n ** 64n - 1n), plain: !(v[4] instanceof Map) && v[4].name, \
             past53: v[5] === 2n ** 53n + 1n }}))"
        ))
        .await;
    assert_eq!(
        echoed,
        serde_json::json!({
            "described": DESCRIBED, "big": "bigint", "min": "bigint", "bin": true, "map": true,
            "one": "one", "max": "max", "plain": "x", "past53": true,
        })
    );
    web.stop().await;
}

#[tokio::test]
async fn awkward_values_cross_from_rust_to_the_page_and_back() {
    let web = WebHost::start(&["webprobe"]).await;
    let shell = web.open_shell().await;

    // What the page decoded.
    let described: String =
        web.host.invoke_frame("webprobe", shell.frame, "describe", &in_rust(), FAILSAFE).await.unwrap();
    assert_eq!(described, DESCRIBED);
    // Through the page and back: the same MessagePack value.
    let echoed: Value = web.host.invoke_frame("webprobe", shell.frame, "echo", &in_rust(), FAILSAFE).await.unwrap();
    assert_eq!(echoed, in_rust());
    // The page's handler erroring: its message and its error's `data`, as main sees them.
    let thrown = web.host.invoke_frame::<_, ()>("webprobe", shell.frame, "throw", &(), FAILSAFE).await.unwrap_err();
    assert_eq!(thrown.kind, extension_host::InvokeErrorKind::Handler, "{thrown}");
    assert!(thrown.message.contains("the page refuses"), "{thrown}");
    let data: Value = thrown.data().expect("the thrown error's data comes along").unwrap();
    assert_eq!(
        data,
        Value::Map(vec![(Value::from("code"), Value::from(9)), (Value::from("why"), Value::from("asked"))])
    );
    // A channel the page does not handle: NoHandler, answered by the client.
    let missing = web.host.invoke_frame::<_, ()>("webprobe", shell.frame, "nothing-here", &(), FAILSAFE).await;
    assert_eq!(missing.unwrap_err().kind, extension_host::InvokeErrorKind::NoHandler);
    web.stop().await;
}
