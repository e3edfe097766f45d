//! The one integration-test binary: drives the real `skyweave` CLI over real
//! sockets against protocol emulators of the OpenAI and Azure OpenAI APIs.

mod support;

mod cases {
    mod admin;
    mod api;
    mod bedrock;
    mod cli;
    mod failover;
    mod keys;
    mod ledger;
    mod plan;
    mod python_sdk;
    mod replicas;
    mod routing;
    mod security;
    mod stores;
    mod streaming;
    mod sync;
    mod vertex;
}
