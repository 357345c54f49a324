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

# put_file SRC DST MODE OWNER GROUP: write SRC's content to DST without following a link a
# service account could have planted. Directories owned by postgres, _rspamd or vmail (say
# /etc/postgresql/15/main) are theirs to change under us, so every step works on open
# directory handles: a symbolic link is followed only where root owns the directory it is
# in, the content goes into a fresh file (O_EXCL, never an existing name) that gets its
# owner and mode through its handle, and an atomic rename puts it in place (replacing a
# planted link, never writing through it). New directories are world-searchable like any
# packaged /etc directory (the step's umask 077 would lock daemons out).
put_file() {
  python3 - "$@" <<'MAILSTACK_PUT'
import grp, os, pwd, secrets, stat, sys
src, dst, mode, owner, group = sys.argv[1:6]
uid = int(owner) if owner.isdigit() else pwd.getpwnam(owner).pw_uid
gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
*dirs, base = dst.strip("/").split("/")
os.umask(0o022)
fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
for name in dirs:
    try:
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        os.mkdir(name, 0o755, dir_fd=fd)
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
    here = os.fstat(fd)
    if stat.S_ISLNK(st.st_mode) and (here.st_uid != 0 or here.st_mode & 0o022):
        sys.exit(f"refusing {dst}: {name} is a symbolic link in a directory root does not own alone")
    nfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | (0 if stat.S_ISLNK(st.st_mode) else os.O_NOFOLLOW), dir_fd=fd)
    os.close(fd)
    fd = nfd
tmp = f".{base}.mailstack.{secrets.token_hex(6)}"
out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=fd)
try:
    with open(src, "rb") as f:
        os.write(out, f.read())
    os.fchown(out, uid, gid)
    os.fchmod(out, int(mode, 8))
    os.fsync(out)
    os.close(out)
    os.rename(tmp, base, src_dir_fd=fd, dst_dir_fd=fd)
except BaseException:
    os.unlink(tmp, dir_fd=fd)
    raise
MAILSTACK_PUT
}

# install_file PATH: put the staged file in place if it differs; prints nothing, returns
# 0 if it changed. A link at PATH never counts as unchanged: it is replaced.
install_file() {
  local path=$1 mode owner group
  read -r mode owner group < "$STAGE$path.mailstack-meta"
  if [ -e "$path" ] && [ ! -L "$path" ] && cmp -s "$STAGE$path" "$path" \
     && [ "$(stat -c '%a %U %G' "$path")" = "$mode $owner $group" ]; then
    return 1
  fi
  put_file "$STAGE$path" "$path" "$mode" "$owner" "$group"
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
