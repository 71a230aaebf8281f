package dev.edgevl.zeroshot

import android.content.Context
import android.graphics.Bitmap
import org.json.JSONArray
import org.json.JSONObject
import org.pytorch.executorch.EValue
import org.pytorch.executorch.Module
import org.pytorch.executorch.Tensor
import java.io.File
import kotlin.math.roundToInt

/** What this sample assumes about an edgevl export; tests/apps/test_android_sample.py checks each
 *  assumption against the manifest of a real `edgevl export --target executorch`. */
object ExportContract {
    const val TARGET = "executorch"
    const val IMAGE_INPUT = "pixel_values"
    val TEXT_INPUTS = listOf("input_ids", "attention_mask")
    const val RESIZE_MODE = "shortest_edge"
    /** preprocess.json keys the sample reads or knowingly ignores; any other key is refused. */
    val PREPROCESS_KEYS = setOf(
        "resize", "crop", "mean", "std", "interpolation", "resize_mode",
        "context_length", "text_inputs", "pad_token_id", "extra",
    )
    /** One text per forward call: the text program's batch is dynamic 1..16, so batch 1 always fits. */
    const val TEXT_BATCH = 1
}

class ExportError(message: String) : Exception(message)

data class Ranked(val label: String, val score: Float)

/** The two towers of an export's assets, loaded into ExecuTorch, and the labels to rank. */
class ZeroShot(context: Context, precision: String = "int8") {
    private val manifest = JSONObject(asset(context, "manifest.json"))
    private val preprocess = JSONObject(asset(context, "preprocess.json"))
    private val labels = JSONObject(asset(context, "labels.json"))
    private val image: Module
    private val text: Module
    private val labelEmbeds: List<FloatArray>

    init {
        val unknown = preprocess.keys().asSequence().filter { it !in ExportContract.PREPROCESS_KEYS }.toList()
        if (unknown.isNotEmpty()) throw ExportError("preprocess.json has keys this sample does not implement: $unknown")
        if (preprocess.getString("resize_mode") != ExportContract.RESIZE_MODE) {
            throw ExportError("preprocess.json resize_mode ${preprocess.getString("resize_mode")} is not implemented")
        }
        val chosen = pickPrecision(precision)
        image = Module.load(copyOut(context, artifact("image", chosen, listOf(ExportContract.IMAGE_INPUT))))
        text = Module.load(copyOut(context, artifact("text", chosen, ExportContract.TEXT_INPUTS)))
        labelEmbeds = embedLabels()
    }

    /** `precision` when the export has both towers at it, verified by the runtime; else fp32. */
    private fun pickPrecision(precision: String): String {
        val both = listOf("image", "text").all { c -> entries().any { it.getString("component") == c && it.getString("precision") == precision } }
        return if (both) precision else "fp32"
    }

    private fun entries(): List<JSONObject> {
        val all = manifest.getJSONArray("artifacts")
        return (0 until all.length()).map { all.getJSONObject(it) }.filter {
            it.getString("target") == ExportContract.TARGET && it.optString("verified") == "runtime" &&
                (it.optJSONObject("parity")?.optBoolean("passed") ?: false)
        }
    }

    /** The artifact's path inside the export, after checking its inputs are the ones this sample feeds. */
    private fun artifact(component: String, precision: String, inputs: List<String>): String {
        val entry = entries().firstOrNull { it.getString("component") == component && it.getString("precision") == precision }
            ?: throw ExportError("the export has no verified $component executorch artifact at $precision")
        val names = entry.getJSONObject("runtime_options").getJSONArray("input_names")
        val given = (0 until names.length()).map { names.getString(it) }
        if (given != inputs) throw ExportError("${entry.getString("path")} takes $given, this sample feeds $inputs")
        return entry.getString("path")
    }

    private fun embedLabels(): List<FloatArray> {
        val ids = labels.getJSONArray("input_ids")
        val mask = labels.getJSONArray("attention_mask")
        return (0 until ids.length()).map { row ->
            val seq = ids.getJSONArray(row).length().toLong()
            val shape = longArrayOf(ExportContract.TEXT_BATCH.toLong(), seq)
            val out = text.forward(
                EValue.from(Tensor.fromBlob(longs(ids.getJSONArray(row)), shape)),
                EValue.from(Tensor.fromBlob(longs(mask.getJSONArray(row)), shape)),
            )
            out[0].toTensor().dataAsFloatArray
        }
    }

    /** Labels ranked by cosine similarity to the photo (both embeddings are L2-normalised by the towers). */
    fun rank(photo: Bitmap): List<Ranked> {
        val crop = preprocess.getInt("crop").toLong()
        val pixels = Tensor.fromBlob(pixelValues(photo), longArrayOf(1, 3, crop, crop))
        val embed = image.forward(EValue.from(pixels))[0].toTensor().dataAsFloatArray
        val names = labels.getJSONArray("labels")
        return labelEmbeds.mapIndexed { i, t -> Ranked(names.getString(i), dot(embed, t)) }.sortedByDescending { it.score }
    }

    /** Short side to `resize`, centre crop `crop`, RGB in [0, 1], (x - mean) / std, CHW float32.
     *  Android's bilinear filter, not Pillow's resampling: pixels differ slightly from the reference's. */
    private fun pixelValues(photo: Bitmap): FloatArray {
        val resize = preprocess.getInt("resize")
        val crop = preprocess.getInt("crop")
        val scale = resize.toFloat() / minOf(photo.width, photo.height)
        val w = maxOf(crop, (photo.width * scale).roundToInt())
        val h = maxOf(crop, (photo.height * scale).roundToInt())
        val resized = Bitmap.createScaledBitmap(photo, w, h, true)
        val left = ((w - crop) / 2.0).roundToInt()
        val top = ((h - crop) / 2.0).roundToInt()
        val argb = IntArray(crop * crop)
        resized.getPixels(argb, 0, crop, left, top, crop, crop)
        val mean = preprocess.getJSONArray("mean")
        val std = preprocess.getJSONArray("std")
        val plane = crop * crop
        val out = FloatArray(3 * plane)
        for (i in 0 until plane) {
            val p = argb[i]
            val rgb = intArrayOf((p shr 16) and 0xff, (p shr 8) and 0xff, p and 0xff)
            for (c in 0 until 3) {
                out[c * plane + i] = ((rgb[c] / 255f) - mean.getDouble(c).toFloat()) / std.getDouble(c).toFloat()
            }
        }
        return out
    }

    companion object {
        private fun asset(context: Context, name: String): String =
            context.assets.open(name).bufferedReader().use { it.readText() }

        /** ExecuTorch loads a program from a file path: the asset is copied out once. */
        private fun copyOut(context: Context, path: String): String {
            val file = File(context.filesDir, path)
            if (!file.exists()) {
                file.parentFile?.mkdirs()
                context.assets.open(path).use { input -> file.outputStream().use { input.copyTo(it) } }
            }
            return file.absolutePath
        }

        private fun longs(row: JSONArray): LongArray = LongArray(row.length()) { row.getLong(it) }

        private fun dot(a: FloatArray, b: FloatArray): Float {
            var s = 0f
            for (i in a.indices) s += a[i] * b[i]
            return s
        }
    }
}
