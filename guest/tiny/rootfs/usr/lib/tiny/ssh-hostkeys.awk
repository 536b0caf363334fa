# Read cloud-config's host key settings (the top-level keys ssh_keys, ssh_deletekeys and
# ssh_genkeytypes of cloud-init's cc_ssh module) into files under the directory OUT, which must
# exist and contain an empty "keys" directory:
#   OUT/ssh_keys        exists when ssh_keys is there; OUT/keys/NAME holds each entry's value
#                       (ed25519_private, ed25519_public, ...) as text ending in a newline
#   OUT/deletekeys      the ssh_deletekeys value: the plain scalar as written, "(quoted)" for a
#                       quoted string (absent: not given)
#   OUT/genkeytypes     exists when ssh_genkeytypes is there; its items, one per line
#   OUT/errors          one line per entry that could not be read: key names and reasons only
# Values are private keys: they go only to OUT/keys (run this under umask 077), never to stdout
# or to OUT/errors. A small YAML subset: a block mapping under ssh_keys whose values are literal
# block scalars ("|", "|-", "|+", "|2"), quoted or plain one-line scalars; block or flow lists.
#   awk -v OUT=/run/nocloud/ssh -f ssh-hostkeys.awk user-data

function err(msg) { print msg > (OUT "/errors") }
function indent(s) { match(s, /^ */); return RLENGTH }
# A one-line scalar: "double" (with \n \t \" \\ escapes), 'single', or plain minus " #comment".
# Sets bad when a quote is not closed on the line.
function scalar(v,   q, i, c, out) {
  bad = 0
  sub(/^[ \t]+/, "", v)
  q = substr(v, 1, 1)
  if (q == "'") {
    out = ""; v = substr(v, 2)
    while ((i = index(v, "'")) > 0) {
      out = out substr(v, 1, i - 1)
      if (substr(v, i + 1, 1) != "'") return out
      out = out "'"; v = substr(v, i + 2)
    }
    bad = 1; return ""
  }
  if (q == "\"") {
    out = ""
    for (i = 2; i <= length(v); i++) {
      c = substr(v, i, 1)
      if (c == "\"") return out
      if (c == "\\") {
        c = substr(v, ++i, 1)
        if (c == "n") c = "\n"; else if (c == "t") c = "\t"; else if (c == "r") c = ""
        else if (c == "/" || c == " ") ; else if (c != "\\" && c != "\"") { bad = 1; return "" }
      }
      out = out c
    }
    bad = 1; return ""
  }
  sub(/[ \t]+#.*$/, "", v)
  sub(/[ \t]+$/, "", v)
  return v
}
# Split "key: value" (rest has no indentation); sets k and v, returns 0 when it is not a key.
function keyval(rest) {
  if (!match(rest, /^("[^"]*"|'[^']*'|[^ \t:#"'][^:]*):([ \t]|$)/)) return 0
  k = substr(rest, 1, RLENGTH); sub(/:[ \t]*$/, "", k); k = scalar(k)
  v = substr(rest, RLENGTH + 1); sub(/^[ \t]+/, "", v)
  return 1
}
function list_item(v) {
  v = scalar(v)
  if (bad || v !~ /^[A-Za-z0-9_-]+$/) { err("ssh_genkeytypes: an item is not a key type name"); return }
  print v > (OUT "/genkeytypes")
}
function block_end() {
  if (bfile != "") close(bfile)
  inblock = 0; bfile = ""
}

BEGIN { top = ""; einde = -1; inblock = 0; bfile = ""; skip = 0 }
{ sub(/\r$/, "") }
inblock {
  # Literal block: every line indented at least the block's indentation belongs to it; blank
  # lines too (kept only when more content follows: "clip" chomping).
  if ($0 ~ /^[ \t]*$/) { if (bind > 0) blanks++; next }
  ind = indent($0)
  if (bind == 0) {
    if (ind <= einde) { block_end(); err("ssh_keys." bname ": empty block scalar") }
    else bind = ind
  }
  if (inblock && ind >= bind) {
    for (; blanks > 0; blanks--) print "" > bfile
    print substr($0, bind + 1) > bfile
    next
  }
  if (inblock) block_end()
}
/^[ \t]*$/ || /^[ \t]*#/ { next }
{
  ind = indent($0); rest = substr($0, ind + 1)
  if (ind == 0 && rest ~ /^(---|\.\.\.)([ \t]|$)/) { top = ""; next }
  if (ind == 0 && !(rest ~ /^-([ \t]|$)/)) {
    top = ""
    if (!keyval(rest)) next
    if (k == "ssh_keys") {
      top = k; einde = -1; skip = 0
      printf "" > (OUT "/ssh_keys")
      if (v == "{}" || v ~ /^\{\}[ \t]+#/) top = ""
      else if (v != "" && v !~ /^#/) { err("ssh_keys: expected a block mapping (key: value lines below it)"); top = "" }
    } else if (k == "ssh_deletekeys") {
      # A quoted value is a string, true for cloud-init even when it reads "false".
      if (v ~ /^["']/) v = "(quoted)"; else v = scalar(v)
      printf "%s\n", v > (OUT "/deletekeys")
    } else if (k == "ssh_genkeytypes") {
      top = k
      printf "" > (OUT "/genkeytypes")
      if (v == "" || v ~ /^#/) next  # a block list follows (or null: an empty list)
      top = ""
      if (substr(v, 1, 1) == "[") {
        sub(/^\[/, "", v); sub(/\][ \t]*(#.*)?$/, "", v)
        n = split(v, items, ",")
        for (i = 1; i <= n; i++) if (items[i] !~ /^[ \t]*$/) list_item(items[i])
      } else if (v != "~" && v != "null") list_item(v)
    }
    next
  }
  if (top == "ssh_genkeytypes") {
    if (match(rest, /^-([ \t]+|$)/)) list_item(substr(rest, RLENGTH + 1))
    else top = ""
    next
  }
  if (top != "ssh_keys") next
  if (einde < 0) einde = ind
  if (ind > einde && skip) next  # the rest of an entry already reported
  skip = 1
  if (ind != einde || !keyval(rest)) { err("ssh_keys: unexpected line (only key: value entries are read)"); next }
  if (k !~ /^[a-z0-9_]+$/) { err("ssh_keys: an entry name is not a key name"); next }
  f = OUT "/keys/" k
  close(f)
  if (v ~ /^\|[-+0-9]*[ \t]*(#.*)?$/) {
    skip = 0; inblock = 1; bname = k; bfile = f; blanks = 0; bind = 0
    if (match(v, /[1-9]/)) bind = einde + substr(v, RSTART, 1)
    printf "" > f
    next
  }
  if (v ~ /^>/) { err("ssh_keys." k ": folded scalars (>) are not supported (use |)"); next }
  if (v == "" || v ~ /^#/) { err("ssh_keys." k ": empty or multi-line plain value (use |)"); next }
  v = scalar(v)
  if (bad) { err("ssh_keys." k ": unterminated or unsupported quoted value"); next }
  printf "%s\n", v > f
  close(f)
  skip = 0
}
END { if (inblock && bind == 0) err("ssh_keys." bname ": empty block scalar"); if (inblock) block_end() }
