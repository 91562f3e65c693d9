//! The API over real HTTP on an ephemeral port.

use tokio::sync::oneshot;

async fn start() -> (String, oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        anb_api::serve(listener, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    (base, stop, server)
}

#[tokio::test]
async fn health_answers_200_and_server_stops_on_signal() {
    let (base, stop, server) = start().await;
    let response = reqwest::get(format!("{base}/health")).await.unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["status"], "ok");

    let spec = reqwest::get(format!("{base}/openapi.json")).await.unwrap();
    assert_eq!(spec.status(), 200);
    let docs = reqwest::get(format!("{base}/docs")).await.unwrap();
    assert_eq!(docs.status(), 200);

    stop.send(()).unwrap();
    server.await.unwrap();
    assert!(reqwest::get(format!("{base}/health")).await.is_err());
}
