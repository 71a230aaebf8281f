package dev.edgevl.zeroshot

import android.graphics.BitmapFactory
import android.os.Bundle
import android.widget.TextView
import androidx.activity.ComponentActivity
import androidx.activity.result.contract.ActivityResultContracts
import kotlin.concurrent.thread

/** Pick a photo; the labels of labels.json are ranked for it by the export's two .pte towers. */
class MainActivity : ComponentActivity() {
    private lateinit var view: TextView
    private var model: ZeroShot? = null

    private val pick = registerForActivityResult(ActivityResultContracts.GetContent()) { uri ->
        if (uri == null) return@registerForActivityResult
        thread {
            val text = try {
                val photo = contentResolver.openInputStream(uri).use { BitmapFactory.decodeStream(it) }
                val zeroShot = model ?: ZeroShot(this).also { model = it }
                zeroShot.rank(photo).take(5).joinToString("\n") { "%.3f  %s".format(it.score, it.label) }
            } catch (e: Exception) {
                "failed: ${e.message}"
            }
            runOnUiThread { view.text = text }
        }
    }

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        view = TextView(this).apply { text = "tap to pick a photo"; textSize = 18f; setPadding(32, 32, 32, 32) }
        view.setOnClickListener { pick.launch("image/*") }
        setContentView(view)
    }
}
