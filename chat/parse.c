/* SPDX-License-Identifier: MIT */
/*
 * chat/parse.c — model output, streamed in chunks, into reasoning, content
 * and tool calls; encoding_dsv4.py's parse_message_from_completion_text made
 * incremental and tolerant.
 *
 * Text waits in `pend` until it is certain. Each phase scans pend position by
 * position for its stop strings; a stop that the buffer's end cuts short
 * holds the text from its start (it may be markup). Decisions depend only on
 * the bytes, never on where chunks were cut: a scan either finds a whole stop
 * at the earliest position where one could start, or waits.
 *
 * What is tolerated beyond encoding_dsv4 (the spellings vLLM's DSML parser
 * accepts and ones seen from the model): "|" for the full-width "｜" around
 * DSML; the V3.2 block name function_calls; an opener not preceded by a
 * blank line; any whitespace between tags and around attributes, where the
 * reference wants exactly one "\n" or " ".
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat/chat.h"
#include "chat/chat-internal.h"

#define EOS_TEXT "<｜end▁of▁sentence｜>"

enum phase { P_REASONING, P_CONTENT, P_BLOCK, P_AFTER, P_ENDED };

/* Where the DSML block parser stands: which read of parse_tool_calls it is
 * in, from which position of pend that read started. */
enum bphase { B_GAP, B_HEADER, B_PARAM, B_PGAP };

struct dp_chat_parser {
	enum dp_chat_format format;
	enum phase phase;
	bool finished;
	bool started; /* something was read: a leading <think> is no longer possible */
	char *id_prefix;
	size_t n_ids;
	unsigned flags;

	struct chat_buf pend;
	size_t scan;       /* pend positions before this hold no stop start */
	size_t opener_len; /* P_BLOCK: the raw opener, given as content if the block fails */
	char opener[64];

	/* the block being read */
	enum bphase bphase;
	size_t bstart;
	struct chat_buf name, args, keys; /* keys: the parameter names, NUL-separated */
	size_t n_keys;
	struct dp_chat_tool_call *calls; /* completed in this block */
	size_t n_calls;

	/* stray-markup detection across chunks: the last bytes given out */
	char tail[2][64];
	size_t tail_len[2];

	/* what the current call reports */
	struct chat_buf out_reasoning, out_content;
	struct dp_chat_tool_call *out_calls;
	size_t n_out_calls;
};

/* ---- matching markup ----------------------------------------------------- */

enum { NO = 0, FULL = 1, PART = -1 };

/* Compare lit at s[i..]: FULL, PART (the buffer ends while it matches) or NO. */
static int lit_at(const char *s, size_t n, size_t i, const char *lit, size_t *len)
{
	size_t k = strlen(lit);
	size_t have = n - i < k ? n - i : k;
	if (memcmp(s + i, lit, have) != 0)
		return NO;
	*len = k;
	return have == k ? FULL : PART;
}

/* A DSML tag start: lead, a pipe ("｜" or "|"), "DSML", a pipe, then one of
 * words (NULL-terminated). Sets *len to the matched length on FULL. */
static int dsml_at(const char *s, size_t n, size_t i, const char *lead, const char *const *words,
                   size_t *len)
{
	static const char *const pipes[] = {"｜", "|"};
	size_t at = i, k;
	int r = lit_at(s, n, at, lead, &k);
	if (r != FULL)
		return r;
	at += k;
	for (int part = 0; part < 3; part++) {
		if (part == 1) {
			r = lit_at(s, n, at, "DSML", &k);
			if (r != FULL)
				return r;
			at += k;
			continue;
		}
		int best = NO;
		for (int p = 0; p < 2 && best != FULL; p++) {
			r = lit_at(s, n, at, pipes[p], &k);
			if (r == FULL) {
				best = FULL;
				at += k;
			} else if (r == PART) {
				best = PART;
			}
		}
		if (best != FULL)
			return best;
	}
	int best = NO;
	for (const char *const *w = words; *w; w++) {
		r = lit_at(s, n, at, *w, &k);
		if (r == FULL) {
			*len = at + k - i;
			return FULL;
		}
		if (r == PART)
			best = PART;
	}
	return best;
}

static const char *const W_BLOCK[] = {"tool_calls", "function_calls", NULL};
static const char *const W_BLOCK_END[] = {"tool_calls>", "function_calls>", NULL};
static const char *const W_INVOKE[] = {"invoke", NULL};
static const char *const W_PARAM[] = {"parameter", NULL};

/* Python's str.isspace for the ASCII range and the common Unicode spaces. */
static size_t space_at(const char *s, size_t n, size_t i)
{
	unsigned char c = (unsigned char)s[i];
	if (c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x1f))
		return 1;
	static const char *const u[] = {"\xc2\x85",     "\xc2\xa0",     "\xe3\x80\x80",
	                                "\xe2\x80\xa8", "\xe2\x80\xa9", "\xe2\x80\xaf",
	                                "\xe2\x81\x9f", "\xe1\x9a\x80"};
	size_t k;
	for (size_t j = 0; j < sizeof(u) / sizeof(u[0]); j++)
		if (lit_at(s, n, i, u[j], &k) == FULL)
			return k;
	if (n - i >= 3 && c == 0xe2 && (unsigned char)s[i + 1] == 0x80 &&
	    (unsigned char)s[i + 2] >= 0x80 && (unsigned char)s[i + 2] <= 0x8a)
		return 3; /* U+2000..U+200A */
	return 0;
}

static size_t skip_space(const char *s, size_t n, size_t i)
{
	size_t k;
	while (i < n && (k = space_at(s, n, i)))
		i += k;
	return i;
}

/* ---- output --------------------------------------------------------------- */

static const char *const STRAY[] = {"<｜begin▁of▁sentence｜>", EOS_TEXT, "<think>", "</think>",
                                    "｜DSML｜"};

static void stray_check(struct dp_chat_parser *p, int chan, const char *s, size_t n)
{
	char win[64 + 64];
	size_t t = p->tail_len[chan];
	/* Look at the old tail with each new piece of up to 64 bytes. */
	for (size_t off = 0; off < n;) {
		size_t k = n - off < 64 ? n - off : 64;
		memcpy(win, p->tail[chan], t);
		memcpy(win + t, s + off, k);
		size_t w = t + k;
		for (size_t j = 0; j < sizeof(STRAY) / sizeof(STRAY[0]); j++)
			if (memmem(win, w, STRAY[j], strlen(STRAY[j])))
				p->flags |= DP_CHAT_PARSE_STRAY;
		t = w < 40 ? w : 40;
		memmove(p->tail[chan], win + w - t, t);
		off += k;
	}
	p->tail_len[chan] = t;
}

static void emit(struct dp_chat_parser *p, int chan, const char *s, size_t n)
{
	if (!n)
		return;
	if (p->format == DP_CHAT_FORMAT_V4)
		stray_check(p, chan, s, n);
	chat_buf_add(chan ? &p->out_content : &p->out_reasoning, s, n);
}

/* Drop pend[0..k). */
static void consume(struct dp_chat_parser *p, size_t k)
{
	if (!p->pend.p)
		return; /* nothing was ever fed */
	memmove(p->pend.p, p->pend.p + k, p->pend.len - k);
	p->pend.len -= k;
	if (p->pend.p)
		p->pend.p[p->pend.len] = '\0';
	p->scan = p->scan > k ? p->scan - k : 0;
}

/* Where an unfinished UTF-8 sequence starts at the end of s[0..n), or n. */
static size_t utf8_cut(const char *s, size_t n)
{
	for (size_t back = 1; back <= 3 && back <= n; back++) {
		unsigned char c = (unsigned char)s[n - back];
		if ((c & 0xc0) == 0x80)
			continue;
		size_t need = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc0 ? 2 : 1;
		return need > back ? n - back : n;
	}
	return n;
}

/* ---- reasoning and content ---------------------------------------------- */

/* Scan pend from p->scan for a stop of the phase. Returns FULL with *at, *len
 * and *which (0: end of sentence, 1: </think>, 2: a block opener), PART with
 * *at where the possible stop starts, or NO. */
static int text_stop(struct dp_chat_parser *p, size_t *at, size_t *len, int *which)
{
	const char *s = p->pend.p;
	size_t n = p->pend.len;
	for (size_t i = p->scan; i < n; i++) {
		if (s[i] != '<')
			continue;
		int r;
		size_t k;
		if ((r = lit_at(s, n, i, EOS_TEXT, &k)) != NO)
			*which = 0;
		else if (p->phase == P_REASONING && (r = lit_at(s, n, i, "</think>", &k)) != NO)
			*which = 1;
		else if (p->phase == P_CONTENT && (r = dsml_at(s, n, i, "<", W_BLOCK, &k)) != NO)
			*which = 2;
		if (r == NO)
			continue;
		*at = i;
		*len = k;
		return r;
	}
	return NO;
}

static void text_run(struct dp_chat_parser *p, bool final)
{
	if (p->phase == P_REASONING && !p->started) {
		/* A model that repeats the prompt's <think> first: drop it. */
		size_t k;
		int r = lit_at(p->pend.p ? p->pend.p : "", p->pend.len, 0, "<think>", &k);
		if (r == PART && !final)
			return;
		if (r == FULL)
			consume(p, k);
		p->started = true;
	}
	int chan = p->phase == P_CONTENT;
	size_t at, len;
	int which = 0;
	int r = text_stop(p, &at, &len, &which);
	if (r == FULL) {
		size_t keep = at;
		if (which == 2 && at >= 2 && !memcmp(p->pend.p + at - 2, "\n\n", 2))
			keep = at - 2; /* the blank line belongs to the opener */
		emit(p, chan, p->pend.p, keep);
		if (which == 0) {
			if (p->phase == P_REASONING)
				p->flags |= DP_CHAT_PARSE_UNTERMINATED;
			p->phase = P_ENDED;
		} else if (which == 1) {
			p->phase = P_CONTENT;
		} else {
			p->opener_len = at + len - keep;
			memcpy(p->opener, p->pend.p + keep, p->opener_len);
			p->phase = P_BLOCK;
			p->bphase = B_GAP;
			p->bstart = 0;
		}
		consume(p, at + len);
		p->scan = 0;
		return;
	}
	size_t hold = r == PART ? at : p->pend.len;
	if (final) {
		hold = p->pend.len;
	} else {
		/* A blank line may be an opener's. */
		if (chan)
			for (int k = 0; k < 2 && hold > 0 && p->pend.p[hold - 1] == '\n'; k++)
				hold--;
		hold = utf8_cut(p->pend.p, hold);
	}
	emit(p, chan, p->pend.p, hold);
	consume(p, hold);
	/* Only the few held bytes are left: they are scanned again. */
	p->scan = 0;
}

/* ---- the DSML block ------------------------------------------------------ */

static void calls_free(struct dp_chat_tool_call *c, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(c[i].id);
		free(c[i].name);
		free(c[i].arguments);
	}
	free(c);
}

/* The earliest of the stops (each a lead and words) from p->scan: FULL with
 * at, len and which, or NO to wait (p->scan then where to look again). */
struct stop {
	const char *lead;
	const char *const *words;
};

static int block_find(struct dp_chat_parser *p, const struct stop *stops, int n_stops, size_t *at,
                      size_t *len, int *which)
{
	const char *s = p->pend.p;
	size_t n = p->pend.len;
	for (size_t i = p->scan; i < n; i++) {
		if (s[i] != '<' && s[i] != '/')
			continue;
		for (int k = 0; k < n_stops; k++) {
			int r = dsml_at(s, n, i, stops[k].lead, stops[k].words, len);
			if (r == FULL) {
				*at = i;
				*which = k;
				return FULL;
			}
			if (r == PART) {
				p->scan = i;
				return NO;
			}
		}
	}
	p->scan = n;
	return NO;
}

/* s[0..n) is `\s*>\s*`: the gap between tags. */
static bool gap_ok(const char *s, size_t n)
{
	size_t i = skip_space(s, n, 0);
	if (i >= n || s[i] != '>')
		return false;
	return skip_space(s, n, i + 1) == n;
}

/* `\s*name\s*=\s*"NAME"\s*>\s*` — the rest of an invoke tag. */
static bool header_parse(struct dp_chat_parser *p, const char *s, size_t n)
{
	size_t i = skip_space(s, n, 0), k;
	if (lit_at(s, n, i, "name", &k) != FULL)
		return false;
	i = skip_space(s, n, i + k);
	if (i >= n || s[i] != '=')
		return false;
	i = skip_space(s, n, i + 1);
	if (i >= n || s[i] != '"')
		return false;
	i++;
	size_t e = n; /* back over `"\s*>\s*` */
	while (e > i && space_at(s, n, e - 1) == 1)
		e--;
	if (e <= i || s[e - 1] != '>')
		return false;
	e--;
	while (e > i && space_at(s, n, e - 1) == 1)
		e--;
	if (e <= i || s[e - 1] != '"')
		return false;
	p->name.len = 0;
	chat_buf_add(&p->name, s + i, e - 1 - i);
	return true;
}

/* `\s+name="K"\s+string="(true|false)"\s*>VALUE<\s*` — a parameter up to the
 * closing tag's "/"; its JSON added to p->args. -1 when malformed. */
static int param_parse(struct dp_chat_parser *p, const char *s, size_t n)
{
	size_t i = skip_space(s, n, 0), k;
	if (i == 0 || lit_at(s, n, i, "name=\"", &k) != FULL)
		return -1;
	size_t name = i + k, name_end = 0, val = 0;
	bool is_str = false;
	for (size_t q = name; q < n && !val; q++) {
		if (s[q] != '"')
			continue;
		size_t j = skip_space(s, n, q + 1);
		if (j == q + 1 || lit_at(s, n, j, "string=\"", &k) != FULL)
			continue;
		j += k;
		if (lit_at(s, n, j, "true\"", &k) == FULL)
			is_str = true;
		else if (lit_at(s, n, j, "false\"", &k) == FULL)
			is_str = false;
		else
			continue;
		j = skip_space(s, n, j + k);
		if (j < n && s[j] == '>') {
			name_end = q;
			val = j + 1;
		}
	}
	if (!val)
		return -1;
	size_t e = n;
	while (e > val && space_at(s, n, e - 1) == 1)
		e--;
	if (e <= val || s[e - 1] != '<')
		return -1;
	e--;
	/* duplicate names are an error, as in decode */
	const char *key = s + name;
	size_t key_len = name_end - name;
	for (size_t off = 0, c = 0; c < p->n_keys; c++) {
		size_t l = strlen(p->keys.p + off);
		if (l == key_len && !memcmp(p->keys.p + off, key, l))
			return -1;
		off += l + 1;
	}
	if (memchr(key, '\0', key_len))
		return -1;
	chat_buf_add(&p->keys, key, key_len);
	chat_buf_add(&p->keys, "", 1);
	p->n_keys++;

	chat_buf_adds(&p->args, p->n_keys > 1 ? ", " : "{");
	chat_py_dumps_string(&p->args, key, key_len);
	chat_buf_adds(&p->args, ": ");
	if (is_str) {
		chat_py_dumps_string(&p->args, s + val, e - val);
	} else if (chat_py_json_valid(s + val, e - val)) {
		chat_buf_add(&p->args, s + val, e - val);
	} else {
		p->flags |= DP_CHAT_PARSE_BAD_VALUE;
		chat_py_dumps_string(&p->args, s + val, e - val);
	}
	return 0;
}

static int call_finish(struct dp_chat_parser *p)
{
	if (p->n_keys == 0)
		chat_buf_adds(&p->args, "{");
	chat_buf_adds(&p->args, "}");
	if (p->name.oom || p->args.oom || p->keys.oom)
		return -ENOMEM;
	struct dp_chat_tool_call *c = realloc(p->calls, (p->n_calls + 1) * sizeof(*c));
	if (!c)
		return -ENOMEM;
	p->calls = c;
	char id[32];
	snprintf(id, sizeof(id), "%zu", p->n_ids + p->n_calls);
	struct dp_chat_tool_call call = {
	    .id = malloc(strlen(p->id_prefix) + strlen(id) + 1),
	    .name = strndup(p->name.p ? p->name.p : "", p->name.len),
	    .arguments = strdup(p->args.p),
	};
	if (!call.id || !call.name || !call.arguments) {
		free(call.id);
		free(call.name);
		free(call.arguments);
		return -ENOMEM;
	}
	sprintf(call.id, "%s%s", p->id_prefix, id);
	p->calls[p->n_calls++] = call;
	p->args.len = 0;
	p->keys.len = 0;
	p->n_keys = 0;
	return 0;
}

/* The block failed: its opener becomes content, and what followed it is read
 * again as content. */
static void block_fail(struct dp_chat_parser *p)
{
	p->flags |= DP_CHAT_PARSE_MALFORMED;
	calls_free(p->calls, p->n_calls);
	p->calls = NULL;
	p->n_calls = 0;
	p->args.len = p->keys.len = 0;
	p->n_keys = 0;
	emit(p, 1, p->opener, p->opener_len);
	p->phase = P_CONTENT;
	p->scan = 0;
}

/* One step of parse_tool_calls. Returns 1 when it moved on, 0 to wait, -1
 * when the block is malformed, -ENOMEM. */
static int block_step(struct dp_chat_parser *p)
{
	static const struct stop gap_stops[] = {{"<", W_INVOKE}, {"</", W_BLOCK_END}};
	static const struct stop body_stops[] = {{"<", W_PARAM}, {"</", W_INVOKE}};
	static const struct stop value_stop[] = {{"/", W_PARAM}};
	size_t at = 0, len = 0;
	int which = 0;
	const char *s = p->pend.p;
	switch (p->bphase) {
	case B_GAP:
		if (block_find(p, gap_stops, 2, &at, &len, &which) != FULL)
			return 0;
		if (!gap_ok(s + p->bstart, at - p->bstart))
			return -1;
		if (which == 1 && p->n_calls) { /* the block is over: its calls are certain */
			struct dp_chat_tool_call *c =
			    realloc(p->out_calls, (p->n_out_calls + p->n_calls) * sizeof(*c));
			if (!c)
				return -ENOMEM;
			p->out_calls = c;
			memcpy(c + p->n_out_calls, p->calls, p->n_calls * sizeof(*c));
			p->n_out_calls += p->n_calls;
			p->n_ids += p->n_calls;
			free(p->calls);
			p->calls = NULL;
			p->n_calls = 0;
		}
		if (which == 1) { /* the end (a block may be empty, as encoding_dsv4 reads it) */
			consume(p, at + len);
			p->scan = 0;
			p->phase = P_AFTER;
			return 1;
		}
		p->bphase = B_HEADER;
		break;
	case B_HEADER:
		if (block_find(p, body_stops, 2, &at, &len, &which) != FULL)
			return 0;
		if (!header_parse(p, s + p->bstart, at - p->bstart))
			return -1;
		p->bphase = which == 0 ? B_PARAM : B_GAP;
		if (which == 1) {
			int rc = call_finish(p);
			if (rc < 0)
				return rc;
		}
		break;
	case B_PARAM:
		if (block_find(p, value_stop, 1, &at, &len, &which) != FULL)
			return 0;
		if (param_parse(p, s + p->bstart, at - p->bstart) < 0)
			return -1;
		p->bphase = B_PGAP;
		break;
	case B_PGAP:
		if (block_find(p, body_stops, 2, &at, &len, &which) != FULL)
			return 0;
		if (!gap_ok(s + p->bstart, at - p->bstart))
			return -1;
		p->bphase = which == 0 ? B_PARAM : B_GAP;
		if (which == 1) {
			int rc = call_finish(p);
			if (rc < 0)
				return rc;
		}
		break;
	}
	p->bstart = at + len;
	p->scan = p->bstart;
	return 1;
}

/* ---- driving ---------------------------------------------------------------- */

static int run(struct dp_chat_parser *p, bool final)
{
	for (;;) {
		size_t before = p->pend.len;
		enum phase ph = p->phase;
		switch (p->phase) {
		case P_REASONING:
		case P_CONTENT:
			if (p->format == DP_CHAT_FORMAT_PLAIN) {
				size_t hold =
				    final ? p->pend.len : utf8_cut(p->pend.p, p->pend.len);
				emit(p, 1, p->pend.p, hold);
				consume(p, hold);
				return 0;
			}
			text_run(p, final);
			break;
		case P_BLOCK: {
			int r = block_step(p);
			if (r == -ENOMEM)
				return r;
			if (r < 0 || (r == 0 && final))
				block_fail(p);
			else if (r == 0)
				return 0;
			continue;
		}
		case P_AFTER: {
			size_t i = skip_space(p->pend.p, p->pend.len, 0);
			size_t k;
			/* a multi-byte character cut by the feed may be a space:
			 * wait for its rest (the same text fed whole skips it) */
			int r = i < p->pend.len ? lit_at(p->pend.p, p->pend.len, i, EOS_TEXT, &k)
			                        : PART;
			if (r == NO && !final && i >= utf8_cut(p->pend.p, p->pend.len))
				r = PART;
			if (r == FULL) {
				consume(p, i + k);
				p->phase = P_ENDED;
			} else if (r == NO) {
				p->flags |= DP_CHAT_PARSE_STRAY; /* text after the calls */
				p->phase = P_CONTENT;
			} else if (final) {
				consume(p, p->pend.len);
				return 0;
			} else {
				return 0;
			}
			break;
		}
		case P_ENDED: {
			size_t i = skip_space(p->pend.p, p->pend.len, 0);
			/* complete characters that are not spaces are stray; a
			 * character cut by the feed waits for its rest */
			size_t whole = final ? p->pend.len : utf8_cut(p->pend.p, p->pend.len);
			if (i < whole) {
				p->flags |= DP_CHAT_PARSE_STRAY;
				i = p->pend.len;
			}
			consume(p, i);
			return 0;
		}
		}
		if (p->phase == ph && p->pend.len == before)
			return 0;
	}
}

static void out_reset(struct dp_chat_parser *p)
{
	p->out_reasoning.len = p->out_content.len = 0;
	calls_free(p->out_calls, p->n_out_calls);
	p->out_calls = NULL;
	p->n_out_calls = 0;
}

static int report(struct dp_chat_parser *p, int rc, struct dp_chat_delta *out)
{
	if (rc == 0 && (p->pend.oom || p->out_reasoning.oom || p->out_content.oom || p->name.oom ||
	                p->args.oom || p->keys.oom))
		rc = -ENOMEM;
	if (rc < 0)
		return rc;
	*out = (struct dp_chat_delta){
	    .reasoning = p->out_reasoning.len ? p->out_reasoning.p : "",
	    .reasoning_len = p->out_reasoning.len,
	    .content = p->out_content.len ? p->out_content.p : "",
	    .content_len = p->out_content.len,
	    .calls = p->out_calls,
	    .n_calls = p->n_out_calls,
	    .flags = p->flags,
	    .ended = p->phase == P_ENDED,
	};
	return 0;
}

int dp_chat_parser_new(enum dp_chat_format format, enum dp_chat_mode mode, const char *id_prefix,
                       struct dp_chat_parser **ret)
{
	if (!ret || format < 0 || format >= DP_CHAT_FORMAT_MAX || mode < 0 ||
	    mode >= DP_CHAT_MODE_MAX)
		return -EINVAL;
	struct dp_chat_parser *p = calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	p->format = format;
	p->phase =
	    format == DP_CHAT_FORMAT_V4 && mode == DP_CHAT_MODE_THINKING ? P_REASONING : P_CONTENT;
	p->id_prefix = strdup(id_prefix ? id_prefix : "call_");
	if (!p->id_prefix) {
		free(p);
		return -ENOMEM;
	}
	*ret = p;
	return 0;
}

void dp_chat_parser_free(struct dp_chat_parser *p)
{
	if (!p)
		return;
	out_reset(p);
	calls_free(p->calls, p->n_calls);
	chat_buf_fini(&p->pend);
	chat_buf_fini(&p->name);
	chat_buf_fini(&p->args);
	chat_buf_fini(&p->keys);
	chat_buf_fini(&p->out_reasoning);
	chat_buf_fini(&p->out_content);
	free(p->id_prefix);
	free(p);
}

int dp_chat_parser_feed(struct dp_chat_parser *p, const char *text, size_t len,
                        struct dp_chat_delta *out)
{
	if (!p || (!text && len) || !out || p->finished)
		return -EINVAL;
	out_reset(p);
	chat_buf_add(&p->pend, text ? text : "", len);
	if (p->pend.oom)
		return -ENOMEM;
	return report(p, run(p, false), out);
}

int dp_chat_parser_finish(struct dp_chat_parser *p, struct dp_chat_delta *out)
{
	if (!p || !out || p->finished)
		return -EINVAL;
	out_reset(p);
	p->finished = true;
	int rc = run(p, true);
	if (rc == 0 && p->phase == P_REASONING)
		p->flags |= DP_CHAT_PARSE_UNTERMINATED;
	return report(p, rc, out);
}
