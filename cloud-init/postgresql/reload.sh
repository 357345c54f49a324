# reload_or_restart: apply changed config files. A reload is asynchronous, so wait until
# a new backend sees the new load time before asking which settings still need a
# restart (listen_addresses, wal_level, the sender/slot limits...).
reload_or_restart() {
  local t0
  t0=$($PSQL -Atc "SELECT pg_conf_load_time()")
  systemctl reload "$CLUSTER"
  wait_for 30 "PostgreSQL to reload" conf_loaded_after "$t0"
  if [ "$($PSQL -Atc "SELECT count(*) FROM pg_settings WHERE pending_restart")" != 0 ]; then
    log "restarting PostgreSQL for new settings"
    systemctl restart "$CLUSTER"
  fi
}
conf_loaded_after() {
  [ "$($PSQL -Atc "SELECT pg_conf_load_time() > '$1'")" = t ]
}
# config_pending FILE...: has the running server not applied these files yet? Asked of
# the server rather than trusting "this run changed them", so a run that failed between
# installing a file and reloading is repaired by the next one.
config_pending() {
  local f newest=0 t
  for f in "$@"; do
    t=$(date -r "$f" +%s.%N)
    if [ "${t%.*}" -ge "${newest%.*}" ]; then newest=$t; fi
  done
  [ "$($PSQL -Atc "SELECT pg_conf_load_time() < to_timestamp($newest)")" = t ] \
    || [ "$($PSQL -Atc "SELECT count(*) FROM pg_settings WHERE pending_restart")" != 0 ]
}
