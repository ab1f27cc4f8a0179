//! The configuration entry point against the real broker: a wrong password is a typed
//! error that does not show the password; a good URL connects.

mod common;

use runnel::core::BusError;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_are_refused_without_showing_the_password() {
    let Some(url) = common::test_url() else {
        return;
    };
    let mut bad = url::Url::parse(&url).expect("URL");
    bad.set_username("runnel-nobody").expect("user");
    bad.set_password(Some("not-the-pass-w0rd"))
        .expect("password");
    let err = runnel_rabbitmq::connect(bad.as_str())
        .await
        .expect_err("a wrong password is refused");
    assert!(matches!(err, BusError::AuthenticationFailed(_)), "{err:?}");
    assert!(!format!("{err:?}").contains("not-the-pass-w0rd"), "{err:?}");

    let bus = runnel_rabbitmq::connect(&url).await.expect("connect");
    assert!(!format!("{bus:?}").contains(":guest@"), "{bus:?}");
}
