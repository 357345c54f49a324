# Shared helpers for every deploy step. The step's files arrive base64-encoded on stdin
# and are staged under $STAGE mirroring their target path; nothing is installed until
# the step's script has validated it.
export DEBIAN_FRONTEND=noninteractive
MAILSTACK_CHANGED=""

log() { printf '[%s] %s\n' "$STEP" "$*" >&2; }

stage_file() { # path mode owner group < base64
  local path=$1 mode=$2 owner=$3 group=$4
  mkdir -p "$STAGE$(dirname "$path")"
  base64 -d > "$STAGE$path"
  printf '%s %s %s\n' "$mode" "$owner" "$group" > "$STAGE$path.mailstack-meta"
}

staged() { printf '%s%s' "$STAGE" "$1"; }

# install_file PATH: put the staged file in place if it differs; prints nothing, returns
# 0 if it changed. Ownership is applied to a temp copy first so a service never sees a
# file with the wrong mode.
install_file() {
  local path=$1 mode owner group tmp
  read -r mode owner group < "$STAGE$path.mailstack-meta"
  if [ -e "$path" ] && cmp -s "$STAGE$path" "$path" \
     && [ "$(stat -c '%a %U %G' "$path")" = "$mode $owner $group" ]; then
    return 1
  fi
  # New parent directories are world-searchable like any packaged /etc directory (the
  # step's umask 077 would lock daemons out); the file's own mode guards its content.
  (umask 022; mkdir -p "$(dirname "$path")")
  tmp=$(mktemp "$path.mailstack.XXXXXX")
  cat "$STAGE$path" > "$tmp"
  chown "$owner:$group" "$tmp"
  chmod "$mode" "$tmp"
  mv -f "$tmp" "$path"
  MAILSTACK_CHANGED="$MAILSTACK_CHANGED $path"
  return 0
}

# install_all [PREFIX]: install every staged file (under PREFIX); sets CHANGED=1 if any did.
install_all() {
  local prefix=${1:-/} f CHANGED_ANY=1
  while IFS= read -r -d '' f; do
    f=${f#"$STAGE"}
    f=${f%.mailstack-meta}
    case "$f" in "$prefix"*) install_file "$f" && CHANGED_ANY=0 ;; esac
  done < <(find "$STAGE" -name '*.mailstack-meta' -print0 | sort -z)
  return $CHANGED_ANY
}

changed() { # changed PATH-PREFIX: did this run replace anything under it?
  case " $MAILSTACK_CHANGED" in *" $1"*) return 0 ;; esac
  return 1
}

wait_for() { # wait_for SECONDS DESCRIPTION CMD...
  local limit=$1 what=$2 i=0
  shift 2
  until "$@" >/dev/null 2>&1; do
    i=$((i + 1))
    if [ "$i" -ge "$limit" ]; then log "timed out waiting for $what"; return 1; fi
    sleep 1
  done
}
