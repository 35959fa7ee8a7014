/* SPDX-License-Identifier: MIT */
/*
 * dp_v4_model_load on bad model directories: each gives an error code and a
 * message that names the file and what is wrong, never a crash.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "model/v4.h"

static char tmpdir[256];
static struct dp_gpu *gpu;

static void setup(void)
{
	char err[256];
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/dp-test-load-XXXXXX");
	cr_assert_not_null(mkdtemp(tmpdir));
	cr_assert_eq(dp_gpu_new(DP_GPU_CPU, NULL, &gpu, err, sizeof(err)), 0, "%s", err);
}

static void teardown(void)
{
	char cmd[300];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
	cr_expect_eq(system(cmd), 0);
	dp_gpu_free(gpu);
}

static const char *parity_dir(void)
{
	const char *root = getenv("DP_TEST_PARITY");
	return root ? root : "tests/model/parity";
}

/* Copy parity/<name>/{config.json,model.safetensors} into tmpdir. */
static void copy_model(const char *name)
{
	char cmd[1024];
	snprintf(cmd, sizeof(cmd), "cp '%s/%s/config.json' '%s/%s/model.safetensors' '%s/'",
		 parity_dir(), name, parity_dir(), name, tmpdir);
	cr_assert_eq(system(cmd), 0, "%s", cmd);
}

static int load(char *err, size_t len)
{
	struct dp_v4_model *m = NULL;
	int ret = dp_v4_model_load(gpu, tmpdir, &m, err, len);
	if (ret == 0)
		dp_v4_model_free(m);
	return ret;
}

static void edit_config(const char *from, const char *to)
{
	char path[512], buf[16384];
	snprintf(path, sizeof(path), "%s/config.json", tmpdir);
	FILE *f = fopen(path, "r");
	cr_assert_not_null(f);
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	char *at = strstr(buf, from);
	cr_assert_not_null(at, "config.json has no \"%s\"", from);
	char out[16384];
	snprintf(out, sizeof(out), "%.*s%s%s", (int)(at - buf), buf, to, at + strlen(from));
	f = fopen(path, "w");
	cr_assert_not_null(f);
	fputs(out, f);
	fclose(f);
}

TestSuite(load, .init = setup, .fini = teardown);

Test(load, a_copied_parity_model_loads)
{
	char err[512] = "";
	copy_model("mixed");
	cr_expect_eq(load(err, sizeof(err)), 0, "%s", err);
}

Test(load, a_missing_directory_names_config_json)
{
	char err[512] = "";
	cr_expect_eq(load(err, sizeof(err)), -ENOENT);
	cr_expect(strstr(err, "config.json") != NULL, "message: %s", err);
}

Test(load, a_directory_without_weights_names_the_checkpoint)
{
	char err[512] = "", path[512];
	copy_model("mixed");
	snprintf(path, sizeof(path), "%s/model.safetensors", tmpdir);
	cr_assert_eq(unlink(path), 0);
	cr_expect_lt(load(err, sizeof(err)), 0);
	cr_expect(strstr(err, "safetensors") != NULL, "message: %s", err);
}

Test(load, a_truncated_checkpoint_is_an_error_not_a_crash)
{
	char err[512] = "", path[512];
	copy_model("mixed");
	snprintf(path, sizeof(path), "%s/model.safetensors", tmpdir);
	struct stat st;
	cr_assert_eq(stat(path, &st), 0);
	cr_assert_eq(truncate(path, st.st_size / 2), 0);
	cr_expect_eq(load(err, sizeof(err)), -EINVAL);
	cr_expect(strstr(err, "model.safetensors") != NULL, "message: %s", err);
}

Test(load, a_checkpoint_that_does_not_fit_the_config_names_the_tensor)
{
	char err[512] = "";
	copy_model("mixed");
	/* the checkpoint's q_lora_rank is 24 */
	edit_config("\"q_lora_rank\": 24", "\"q_lora_rank\": 20");
	cr_expect_eq(load(err, sizeof(err)), -EINVAL);
	cr_expect(strstr(err, "wq_a") != NULL || strstr(err, "q_a_proj") != NULL, "message: %s", err);
}

Test(load, an_invalid_config_names_the_field)
{
	char err[512] = "";
	copy_model("mixed");
	edit_config("\"sliding_attention\"", "\"dense_attention\"");
	cr_expect_eq(load(err, sizeof(err)), -EINVAL);
	cr_expect(strstr(err, "layer_types") != NULL, "message: %s", err);
}

Test(load, garbage_instead_of_a_checkpoint_is_rejected)
{
	char err[512] = "", path[512];
	copy_model("alt");
	snprintf(path, sizeof(path), "%s/model.safetensors", tmpdir);
	int fd = open(path, O_WRONLY | O_TRUNC);
	cr_assert_geq(fd, 0);
	const char junk[] = "\xff\xff\xff\xff\xff\xff\xff\x7f{not json";
	cr_assert_eq(write(fd, junk, sizeof(junk)), (ssize_t)sizeof(junk));
	close(fd);
	cr_expect_eq(load(err, sizeof(err)), -EINVAL);
	cr_expect_neq(err[0], '\0');
}
