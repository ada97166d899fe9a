"""The attribution shell: conversion windows of decided follow-ups, in the worker.

- ``agent``  the attribution agent: purchases, triggers and decisions in, one
             conversion record per decided trigger out, follow-up counts per partition
- ``api``    ``GET /followups`` (all workers merged) and ``/followups/local``

The rules are pure, in :mod:`stream.analytics.attribution` and
:mod:`stream.analytics.followups`.
"""
