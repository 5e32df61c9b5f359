/* test_device.c: device names (backend/device.h) and the native tier's
 * "device" option.
 *
 * What a user sees: "cpu" and "cuda:N" lists parse, typos are refused with
 * the name in the message, and asking for a GPU that this build or machine
 * cannot drive fails with the reason (no CUDA in the build, no driver, no
 * such device) instead of falling back to the CPU unseen. Runs with or
 * without CUDA and a GPU: where one is present, cuda:0 must start. */
#include "engines/native/backend/device.h"
#include "engines/native/runtime/native_engine.h"
#include "tests/unit/test.h"

static void test_parse(void)
{
    struct native_device d;
    char err[256];
    CHECK(native_device_parse(NULL, &d, err, sizeof(err)) == 0 && d.kind == NATIVE_DEVICE_CPU);
    CHECK(native_device_parse("cpu", &d, err, sizeof(err)) == 0 && d.kind == NATIVE_DEVICE_CPU);
    CHECK(native_device_parse("cuda", &d, err, sizeof(err)) == 0 && d.kind == NATIVE_DEVICE_CUDA &&
          d.n == 1 && d.ids[0] == 0);
    CHECK(native_device_parse("cuda:3", &d, err, sizeof(err)) == 0 && d.n == 1 && d.ids[0] == 3);
    CHECK(native_device_parse("cuda:0,1,2,7", &d, err, sizeof(err)) == 0 && d.n == 4 && d.ids[3] == 7);
    static const char *const bad[] = {"gpu", "cuda:", "cuda:x", "cuda:1,", "cuda:,1", "cuda:-1",
                                      "cuda:1 ", "cudax", "cuda:99999", "CPU", "cuda:0,0"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        int rc = native_device_parse(bad[i], &d, err, sizeof(err));
        CHECK(rc == -1 && strstr(err, bad[i]) != NULL);
        if (rc != -1)
            fprintf(stderr, "  accepted \"%s\"\n", bad[i]);
    }
    CHECK(native_device_parse("cuda:0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16", &d, err, sizeof(err)) == -1 &&
          strstr(err, "at most") != NULL);
}

static void test_backend(void)
{
    struct native_device d;
    char err[256];
    native_device_parse("cpu", &d, err, sizeof(err));
    struct native_backend *b = native_device_backend(&d, 1, 0, err, sizeof(err));
    CHECK(b != NULL && !strcmp(b->ops->name, "cpu") && native_device_error(b) == NULL);
    char desc[160];
    if (b) {
        native_device_describe(b, desc, sizeof(desc));
        CHECK(!strncmp(desc, "cpu (", 5) && strstr(desc, "1 threads") != NULL);
    }
    native_backend_free(b);

    /* cuda:7 (no machine we test on has eight GPUs): refused with a reason
     * that names the device, whichever of the three reasons applies. */
    native_device_parse("cuda:7", &d, err, sizeof(err));
    err[0] = '\0';
    b = native_device_backend(&d, 1, 0, err, sizeof(err));
    CHECK(b == NULL && !strncmp(err, "cuda:7: ", 8));
    if (!native_device_cuda_built())
        CHECK(strstr(err, "no CUDA backend") != NULL);
    printf("cuda:7 -> %s\n", err);
    native_backend_free(b);

    /* Several GPUs are the multi-GPU runtime's, not a single backend's. */
    native_device_parse("cuda:0,1", &d, err, sizeof(err));
    b = native_device_backend(&d, 1, 0, err, sizeof(err));
    CHECK(b == NULL && strstr(err, "cuda:0") != NULL);
    native_backend_free(b);

    /* cuda:0 starts where there is a GPU; otherwise the reason says why. */
    native_device_parse("cuda:0", &d, err, sizeof(err));
    err[0] = '\0';
    b = native_device_backend(&d, 1, 0, err, sizeof(err));
    if (b) {
        native_device_describe(b, desc, sizeof(desc));
        printf("cuda:0 -> %s\n", desc);
        CHECK(!strncmp(desc, "cuda:0 (", 8) && native_device_error(b) == NULL);
    } else {
        printf("cuda:0 -> %s\n", err);
        CHECK(!strncmp(err, "cuda:0: ", 8) && strlen(err) > 12);
    }
    native_backend_free(b);
}

/* The tier option: a bad name or type is refused before the model is read
 * (the model path here does not exist, so reaching the loader would say so
 * instead); a good name reaches the loader. */
static void test_json(void)
{
    char err[512];
    CHECK(native_engine_from_json("{\"model\":\"/nonexistent.bin\",\"device\":\"gpu0\"}", NULL, err,
                                  sizeof(err)) == NULL &&
          strstr(err, "gpu0") != NULL);
    CHECK(native_engine_from_json("{\"model\":\"/nonexistent.bin\",\"device\":0}", NULL, err, sizeof(err)) ==
              NULL &&
          strstr(err, "\"device\"") != NULL);
    /* A build without CUDA refuses the device by name before the model;
     * a CUDA build reaches the loader (the device is probed after it). */
    CHECK(native_engine_from_json("{\"model\":\"/nonexistent.bin\",\"device\":\"cuda:0\"}", NULL, err,
                                  sizeof(err)) == NULL &&
          (strstr(err, "nonexistent") != NULL || strstr(err, "no CUDA backend") != NULL));
}

int main(void)
{
    test_parse();
    test_backend();
    test_json();
    TEST_MAIN_END();
}
