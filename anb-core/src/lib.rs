#![doc = include_str!("../README.md")]

pub mod config;
pub mod db;
pub mod domain;
pub mod jobs;
pub mod storage;
