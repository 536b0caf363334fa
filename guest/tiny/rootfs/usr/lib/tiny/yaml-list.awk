# Print, one per line, the items of every list whose key is one of KEYS (space separated), at any
# depth: block lists ("key:" then "- item" lines), flow lists ("key: [a, b]") and plain strings
# ("key: item"). A small YAML subset, enough for cloud-config's ssh_authorized_keys (also inside
# users: entries) and NoCloud meta-data's public-keys. Used with busybox awk in the guest.
#   awk -v KEYS="ssh_authorized_keys" -f yaml-list.awk user-data

# A scalar: quoted ("..." / '...'), or plain with any " #comment" removed.
function scalar(v,   q, i) {
  sub(/^[ \t]+/, "", v)
  q = substr(v, 1, 1)
  if (q == "\"" || q == "'") {
    i = index(substr(v, 2), q)
    return i ? substr(v, 2, i - 1) : substr(v, 2)
  }
  sub(/[ \t]+#.*$/, "", v)
  sub(/[ \t]+$/, "", v)
  return v
}
function emit(v) { v = scalar(v); if (v != "") print v }

BEGIN { n = split(KEYS, k, " "); for (i = 1; i <= n; i++) want[k[i]] = 1; depth = -1; block = -1 }
{ sub(/\r$/, "") }
/^[ \t]*$/ || /^[ \t]*#/ { next }
{
  match($0, /^ */); ind = RLENGTH; rest = substr($0, ind + 1)
  if (block >= 0) { if (ind > block) next; block = -1 }  # inside a "key: |" text block
  if (depth >= 0) {
    # Items of a block list sit at the key's indentation or deeper.
    if (rest ~ /^-([ \t]|$)/ && ind >= depth) { emit(substr(rest, 2)); next }
    if (ind > depth) next
    depth = -1
  }
  # "- key: ..." is a key too (the first key of a mapping inside a list).
  while (match(rest, /^-[ \t]+/)) { ind += RLENGTH; rest = substr(rest, RLENGTH + 1) }
  if (!match(rest, /^("[^"]*"|'[^']*'|[^ \t:#"'][^:]*):([ \t]|$)/)) next
  key = substr(rest, 1, RLENGTH); sub(/:[ \t]*$/, "", key); key = scalar(key)
  val = substr(rest, RLENGTH + 1); sub(/^[ \t]+/, "", val)
  if (val ~ /^[|>][-+0-9]*[ \t]*(#.*)?$/) { block = ind; next }
  if (!(key in want)) next
  if (val == "" || val ~ /^#/) { depth = ind; next }
  if (substr(val, 1, 1) == "[") {
    sub(/^\[/, "", val); sub(/\][ \t]*(#.*)?$/, "", val)
    m = split(val, items, ",")
    for (i = 1; i <= m; i++) emit(items[i])
    next
  }
  emit(val)
}
