//! Starts a node: the range actors (spread over one arbiter per core), the
//! router, then the HTTP server. Actors are started once, here, before
//! `HttpServer::new`, and shared with every worker through `web::Data`.

use std::net::TcpListener;

use actix::{Actor, Arbiter};
use actix_web::{web, App, HttpServer};

use crate::actors::{RangeActor, RouterActor};
use crate::http::{self, AppState};
use crate::settings::Settings;
use crate::view::{ClusterState, ClusterView, ViewWire};

/// The view a cluster starts from when none is stored yet.
pub fn bootstrap_view(settings: &Settings) -> ClusterView {
    ClusterView::new(ViewWire {
        epoch: 1,
        addresses: settings.node_addresses.clone(),
        total_hash_ranges: settings.total_hash_ranges,
        state: ClusterState::Stable,
    })
}

/// Runs a node until the HTTP server stops (SIGINT or SIGTERM).
pub async fn run(settings: Settings) -> std::io::Result<()> {
    let listener = TcpListener::bind((settings.bind, settings.port))?;
    run_on(settings, listener).await
}

/// Like [`run`], on a listener the caller already bound.
pub async fn run_on(settings: Settings, listener: TcpListener) -> std::io::Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let view = bootstrap_view(&settings);
    // Kept alive for the life of the server; each runs range actors.
    let arbiters: Vec<Arbiter> = (0..cores).map(|_| Arbiter::new()).collect();
    let mut ranges = vec![None; settings.total_hash_ranges as usize];
    for (i, range) in view.ranges_of(settings.node_id).into_iter().enumerate() {
        let arbiter = &arbiters[i % arbiters.len()];
        ranges[range as usize] =
            Some(RangeActor::start_in_arbiter(&arbiter.handle(), move |_| RangeActor::new(range)));
    }
    let served = ranges.iter().flatten().count();
    let router = RouterActor::new(settings.node_id, view.clone(), ranges).start();
    let state = web::Data::new(AppState {
        router,
        max_keys_per_request: settings.max_keys_per_request,
        max_body_bytes: settings.max_body_bytes,
    });
    log::info!(
        "serving {served} of {} ranges, epoch {}, on {}",
        view.total_hash_ranges(),
        view.epoch(),
        listener.local_addr()?
    );
    let server = HttpServer::new(move || App::new().app_data(state.clone()).configure(http::configure))
        .workers(cores)
        .listen(listener)?
        .run();
    let result = server.await;
    for arbiter in arbiters {
        arbiter.stop();
    }
    log::info!("stopped");
    result
}
