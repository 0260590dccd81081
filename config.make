# nginx compiles every addon source with $(CC) $(CFLAGS); give the C++
# objects their language standard and relax warnings that nginx's C headers
# trigger only under C++.
for sse_src in $SSE_ENGINE_SRCS $SSE_GLUE_SRCS; do
    sse_obj=`echo $sse_src | sed -e "s#^$ngx_addon_dir/#addon/#" -e "s#\.cpp\\$#.o#"`
    cat << END >> $NGX_MAKEFILE

$NGX_OBJS/$sse_obj: CFLAGS += -std=c++17 -Wno-missing-field-initializers

END
done
