#!/usr/bin/env bash
# Interleaved A/B of the glibc and jemalloc builds of the same code (ad857da vs dbca8b5).
cd /work/main
for r in 1 2; do
  for v in glibc jemalloc; do
    HERALD_PORT=7320 HERALD_ADMIN_LISTEN=127.0.0.1:7321 HERALD_BIN=/work/herald-$v HERALD_REV=$v OUT=/work/ab/$v-$r HERALD_ALONE=0 ROUNDS=1 RETRIES=1 \
      SERVERS="herald-sqlite herald-memory" bench/compare.sh > /work/ab/$v-$r.log 2>&1
  done
done
