#![doc = include_str!("../README.md")]

pub mod accounts;
pub mod auth;
pub mod config;
pub mod db;
pub mod domain;
pub mod jobs;
pub mod rankings;
pub mod storage;
pub mod uploads;
pub mod videos;
