// captioner serve: what the page computes without the page (plain functions, no DOM; the browser test calls them):
// how photos are grouped into requests, how an answer is matched to its photos, and the results files (CSV, JSON
// Lines, COCO results JSON) the page downloads, as `captioner caption --out` writes them.
"use strict";

const PHOTOS_PER_REQUEST = 4;  // small requests: progress shows, and a failed request loses few photos
const FORM_BYTES = 2048;  // a request's multipart fields (beam_size, max_length, guided) and final boundary
const PART_BYTES = 256;  // one file part's boundary and headers, besides its name

// The bytes a photo adds to a request: its size, its part's headers and its name (up to 3 bytes a character
// once encoded).
function partBytes(file) {
  return file.size + PART_BYTES + 3 * file.name.length;
}

// Whether the photo fits in a request by itself (limits.maxBytes: the server's --max-upload-mb in bytes).
function fitsAlone(file, limits) {
  return FORM_BYTES + partBytes(file) <= limits.maxBytes;
}

// The name the server sees: browsers escape '"', CR and LF in a multipart file name.
function wireName(name) {
  return name.replace(/"/g, "%22").replace(/\r/g, "%0D").replace(/\n/g, "%0A");
}

// The next request's photos, taken from the front of `waiting` (objects with `file`: {name, size}): at most
// limits.perRequest, their bytes within limits.maxBytes, no two with one name (the answer names photos by file
// name); a photo marked `alone` goes by itself.
function takeBatch(waiting, limits) {
  const batch = [];
  const names = new Set();
  let bytes = FORM_BYTES;
  while (waiting.length) {
    const photo = waiting[0];
    const name = wireName(photo.file.name);
    const full = batch.length >= limits.perRequest || bytes + partBytes(photo.file) > limits.maxBytes;
    if (batch.length && (full || names.has(name) || photo.alone || batch[0].alone)) break;
    batch.push(waiting.shift());
    names.add(name);
    bytes += partBytes(photo.file);
  }
  return batch;
}

// The server's entry for each of `names` (a request's file names, in upload order): {result} or {error}. The answer
// keeps upload order in both `results` and `errors`, so each name is the next entry of one of them.
function matchAnswer(names, results, errors) {
  let r = 0;
  let e = 0;
  return names.map((name) => {
    const result = results[r];
    const error = errors[e];
    const same = (entry) => entry !== undefined && (entry.filename === name || entry.filename === wireName(name));
    if (error !== undefined && (result === undefined || (same(error) && !same(result)))) {
      e += 1;
      return { error: error.error };
    }
    if (result !== undefined) {
      r += 1;
      return { result };
    }
    return { error: "the server's answer did not include this photo" };
  });
}

function csvField(value) {
  const text = value === null || value === undefined ? "" : String(value);
  return /[",\r\n]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

// CSV (RFC 4180: CRLF line ends, fields with a comma, quote or line break quoted, quotes doubled): the header
// image,caption,confidence and a row per photo (a failed photo: an empty caption).
function toCsv(rows) {
  const lines = [["image", "caption", "confidence"]].concat(rows.map((row) => [
    row.image, row.caption === null ? "" : row.caption,
    row.confidence === null ? "" : row.confidence.toFixed(4),
  ]));
  return lines.map((fields) => fields.map(csvField).join(",") + "\r\n").join("");
}

// JSON Lines: one object per photo (image, caption, confidence, needs_review, tags, edited; error for a failure).
function toJsonl(rows) {
  return rows.map((row) => JSON.stringify(row) + "\n").join("");
}

// The COCO image id a file name carries: its stem's trailing number ("COCO_val2014_000000000139.jpg" -> 139), or
// null when it has none.
function cocoImageId(name) {
  const dot = name.lastIndexOf(".");
  const stem = dot > 0 && dot < name.length - 1 ? name.slice(0, dot) : name;
  const match = /(\d+)$/.exec(stem);
  return match ? Number.parseInt(match[1], 10) : null;
}

// COCO results [{"image_id": int, "caption": str}] of the captioned photos, and the photos left out, with why:
// no caption, no trailing number in the name, or an image id an earlier photo already has.
function toCoco(rows) {
  const entries = [];
  const leftOut = [];
  const seen = new Map();
  rows.forEach((row) => {
    const id = cocoImageId(row.image);
    if (row.caption === null) {
      leftOut.push({ image: row.image, why: "not captioned" });
    } else if (id === null) {
      leftOut.push({ image: row.image, why: "no number at the end of the name, which COCO takes as the image id" });
    } else if (seen.has(id)) {
      leftOut.push({ image: row.image, why: `image id ${id}, as ${seen.get(id)}` });
    } else {
      seen.set(id, row.image);
      entries.push({ image_id: id, caption: row.caption });
    }
  });
  return { text: JSON.stringify(entries, null, 1) + "\n", entries, leftOut };
}
